"""Mixed precision behind one small interface: apex amp when installed, else torch.amp.

cfg.AMP: OPT_LEVEL O0 is float32 without autocast, O1 and O2 mixed precision. DTYPE auto is
float16 on accelerators and bfloat16 on a CPU that has it natively; a CPU without it emulates
bf16 slower than float32, so the run stays float32 (describe() says so); bfloat16 or float16
forces a dtype. LOSS_SCALE is "dynamic" or a static N (the seed uses 128). BACKEND auto takes
apex (NVIDIA's or Ascend's) when its amp.initialize imports on an accelerator, else torch.amp.

torch.amp: O1 and O2 both autocast the forward and keep weights, gradients and optimizer state
in float32 (at least as safe as apex O2's fp16 model with fp32 master weights). float16 uses a
GradScaler (dynamic from 2**16, or static N kept by update(new_scale=N)) that skips inf/nan
steps; bfloat16 has the float32 range and needs none.

apex: amp.initialize (combine_grad on npu when it takes it), amp.scale_loss; apex skips
overflowed steps only under a dynamic scale. The model must be on its device before prepare().
"""

import contextlib
import inspect

import torch

from pycls.core import config
from pycls.core import device as dev
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

_APEX_HINT = (
    "install NVIDIA apex (github.com/NVIDIA/apex) or Ascend apex (gitee.com/ascend/apex), "
    "or set AMP.BACKEND native"
)


def apex_amp():
    """Returns (apex.amp, None) when a usable apex amp imports, else (None, reason)."""
    try:
        from apex import amp
    except Exception as e:  # missing, or a broken install: treat as absent
        return None, "apex amp does not import ({})".format(e)
    if not callable(getattr(amp, "initialize", None)):
        # The PyPI package named apex is an unrelated web toolkit
        return None, "the installed apex has no amp.initialize (not NVIDIA's or Ascend's apex)"
    return amp, None


def _dtype(device):
    """Returns the low-precision dtype of AMP.DTYPE; auto: float16 on accelerators, bfloat16 on
    a CPU with native bf16, else None (float32 is faster there)."""
    name = cfg.AMP.DTYPE
    if name != "auto":
        return getattr(torch, name)
    if dev.has_accelerator(device):
        return torch.float16
    return torch.bfloat16 if dev.cpu_has_native_bf16() else None


def choose_backend(device):
    """Returns the backend for cfg.AMP on a device: "off" (O0), "apex" or "native"."""
    wanted = cfg.AMP.BACKEND
    amp, reason = apex_amp() if wanted != "native" else (None, None)
    if wanted == "apex" and amp is None:
        raise PyclsError("AMP.BACKEND is apex but {}: {}".format(reason, _APEX_HINT))
    if cfg.AMP.OPT_LEVEL == "O0" or _dtype(device) is None:
        return "off"
    apex_fits = dev.has_accelerator(device) and _dtype(device) == torch.float16
    if wanted == "apex" and not apex_fits:
        msg = "AMP.BACKEND apex needs a cuda or npu device and float16, not {} with DTYPE {}: "
        msg += "set AMP.BACKEND native"
        raise PyclsError(msg.format(dev.device_type(device), cfg.AMP.DTYPE))
    return "apex" if amp is not None and apex_fits else "native"


class Amp:
    """Mixed precision for one device, configured by cfg.AMP."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.opt_level = cfg.AMP.OPT_LEVEL
        self.backend = choose_backend(self.device)
        self.dtype = _dtype(self.device) if self.backend != "off" else torch.float32
        self.loss_scale = config.loss_scale()
        self.device_type = dev.autocast_device_type(self.device)
        self._apex = apex_amp()[0] if self.backend == "apex" else None
        self._scaler = None
        if self.backend == "native" and self.dtype == torch.float16:
            scale = self.loss_scale or 2.0**16
            self._scaler = torch.amp.GradScaler(self.device_type, init_scale=scale)
        self._skipped, self._skipped_host = None, 0  # device tensor (native), host count (apex)

    def prepare(self, model, optimizer):
        """Returns (model, optimizer) ready for mixed precision (optimizer may be None)."""
        if self.backend != "apex":
            return model, optimizer
        kwargs = {"opt_level": self.opt_level, "loss_scale": self.loss_scale or "dynamic"}
        params = inspect.signature(self._apex.initialize).parameters
        if dev.device_type(self.device) == "npu" and "combine_grad" in params:
            kwargs["combine_grad"] = True
        if optimizer is None:  # evaluation: apex then returns the model alone
            return self._apex.initialize(model, **kwargs), None
        return self._apex.initialize(model, optimizer, **kwargs)

    def autocast(self):
        """Returns the context to run the forward pass and loss in."""
        if self.backend != "native":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward_step(self, loss, optimizer, model, grad_clip=0.0):
        """Scaled backward, unscale, optional grad norm clip, step (skipped on overflow)."""
        if self.backend == "apex":
            return self._apex_step(loss, optimizer, grad_clip)
        scaler = self._scaler
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
            for found_inf in scaler._found_inf_per_device(optimizer).values():
                # 1.0 on inf/nan; the sum stays on the device until skipped_steps reads it
                self._skipped = found_inf + (0 if self._skipped is None else self._skipped)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update(self.loss_scale)
        else:
            optimizer.step()

    def _apex_step(self, loss, optimizer, grad_clip):
        """One step through apex amp (which skips overflowed steps itself)."""
        with self._apex.scale_loss(loss, optimizer) as scaled_loss:
            scaled_loss.backward()
        # apex has read the overflow flag on the host already; it skips only when dynamic
        state = getattr(self._apex, "_amp_state", None)
        scalers = getattr(getattr(state, "_amp_state", state), "loss_scalers", [])
        flags = ((getattr(s, "_has_overflow", False), getattr(s, "dynamic", True)) for s in scalers)
        self._skipped_host += int(any(overflow and dynamic for overflow, dynamic in flags))
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._apex.master_params(optimizer), grad_clip)
        optimizer.step()

    @property
    def skipped_steps(self):
        """Number of steps skipped for inf/nan gradients (reads the device counter)."""
        return self._skipped_host + (0 if self._skipped is None else int(self._skipped.item()))

    def state_dict(self):
        """Returns the loss scaler state for a checkpoint."""
        scaler = self._scaler.state_dict() if self._scaler else None
        apex = self._apex.state_dict() if self._apex else None
        state = {"backend": self.backend, "loss_scale": self.loss_scale or "dynamic"}
        return dict(state, scaler=scaler, apex=apex, skipped_steps=self.skipped_steps)

    def load_state_dict(self, state):
        """Restores the scaler state saved by a run with the same backend and loss scale."""
        mine = {"backend": self.backend, "loss_scale": self.loss_scale or "dynamic"}
        if not state or any(state.get(k) != v for k, v in mine.items()):
            return
        for key, owner in (("scaler", self._scaler), ("apex", self._apex)):
            if owner and state.get(key):
                owner.load_state_dict(state[key])
        self._skipped, self._skipped_host = None, int(state.get("skipped_steps", 0))

    def describe(self):
        """Returns a one-line description of the mixed precision mode for the log."""
        if self.backend == "off" and self.opt_level != "O0":
            msg = "amp: off (float32: {} with AMP.DTYPE auto, but this CPU has no native bf16 and "
            return msg.format(self.opt_level) + "emulates it slower; AMP.DTYPE bfloat16 forces it)"
        if self.backend == "off":
            return "amp: off (O0, float32)"
        if self.backend == "apex":
            scale = self.loss_scale or "dynamic"
            return "amp: apex {}, loss scale {}".format(self.opt_level, scale)
        dtype = str(self.dtype).replace("torch.", "")
        text = "amp: torch.amp {} (autocast {} {}".format(self.opt_level, self.device_type, dtype)
        if self.opt_level == "O2":
            text += "; fp32 weights, unlike apex O2's fp16 model with fp32 master weights"
        if self._scaler is None:
            return text + "; no loss scaling)"
        scale = "static {:g}".format(self.loss_scale) if self.loss_scale else "dynamic"
        return text + "; {} loss scale)".format(scale)
