"""Mixed precision behind one small interface: apex amp when installed, else torch.amp.

cfg.AMP picks the mode:
  OPT_LEVEL   O0 trains in float32 with no autocast; O1 and O2 train in mixed precision.
  DTYPE       auto is float16 on accelerators and bfloat16 on the cpu (fp16 is slow there).
  LOSS_SCALE  "dynamic", or a number N: a static scale (the seed uses 128).
  BACKEND     auto uses apex (NVIDIA's or Ascend's) when its amp.initialize imports and the
              device is an accelerator, else native torch.amp; apex or native forces one.

Native backend (torch.amp):
  O1 and O2 both run the forward pass under torch.autocast(device_type, dtype) and keep the
  weights, gradients and optimizer state in float32. apex O2 instead casts the model to fp16
  (BN stays fp32) and keeps fp32 master weights in the optimizer; autocast with fp32 weights
  is numerically at least as safe, so native O2 equals native O1 and describe() says so.
  float16 uses torch.amp.GradScaler. A dynamic scale starts at 2**16, halves on overflow and
  doubles after 2000 clean steps. A static scale N multiplies the loss by N every step,
  unscales the gradients by 1/N and skips the step when any gradient is inf or nan; the
  scale never changes (update(new_scale=N) after each step). bfloat16 has the float32 range,
  so it uses no scaler (LOSS_SCALE is then ignored).

Skipped steps: the overflow flag of each step is added to a device tensor (no host sync
from us; GradScaler.step itself reads the flag for non-fused optimizers); `skipped_steps`
reads the total only when asked, at log periods and checkpoints.

apex backend: amp.initialize(model, optimizer, opt_level, loss_scale[, combine_grad=True on
npu when the installed apex takes it]) and amp.scale_loss. apex reads the overflow flag on the
host itself and skips the step only under a dynamic scale (its static scale steps anyway);
`skipped_steps` counts what apex skipped. The model must be on its device before prepare().
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
    """Returns the low-precision dtype from AMP.DTYPE (auto: fp16 on accelerators, else bf16)."""
    name = cfg.AMP.DTYPE
    if name == "auto":
        return torch.float16 if dev.has_accelerator(device) else torch.bfloat16
    return getattr(torch, name)


def choose_backend(device):
    """Returns the backend for cfg.AMP on a device: "off" (O0), "apex" or "native"."""
    wanted = cfg.AMP.BACKEND
    amp, reason = apex_amp() if wanted != "native" else (None, None)
    if wanted == "apex" and amp is None:
        raise PyclsError("AMP.BACKEND is apex but {}: {}".format(reason, _APEX_HINT))
    if cfg.AMP.OPT_LEVEL == "O0":
        return "off"
    # apex amp runs float16 on cuda / npu only
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
            init_scale = self.loss_scale or 2.0**16
            self._scaler = torch.amp.GradScaler(self.device_type, init_scale=init_scale)
        # Skipped steps: a device tensor (native, made at the first step) plus a host count
        self._skipped = None
        self._skipped_host = 0

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
            self._count_overflow(scaler._found_inf_per_device(optimizer).values())
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update(self.loss_scale)
        else:
            optimizer.step()

    def _count_overflow(self, found_infs):
        """Adds this step's overflow flags (device tensors, 1.0 on inf/nan) to the count."""
        for found_inf in found_infs:
            if self._skipped is None:
                self._skipped = torch.zeros_like(found_inf)
            self._skipped.add_(found_inf)

    def _apex_step(self, loss, optimizer, grad_clip):
        """One step through apex amp (which skips overflowed steps itself)."""
        with self._apex.scale_loss(loss, optimizer) as scaled_loss:
            scaled_loss.backward()
        # apex has read the overflow flag on the host already; it skips only when dynamic
        state = getattr(self._apex, "_amp_state", None)
        scalers = getattr(getattr(state, "_amp_state", state), "loss_scalers", [])
        skipped = [
            getattr(s, "_has_overflow", False) and getattr(s, "dynamic", True) for s in scalers
        ]
        self._skipped_host += int(any(skipped))
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._apex.master_params(optimizer), grad_clip)
        optimizer.step()

    @property
    def skipped_steps(self):
        """Number of steps skipped for inf/nan gradients (reads the device counter)."""
        on_device = 0 if self._skipped is None else int(self._skipped.item())
        return on_device + self._skipped_host

    def state_dict(self):
        """Returns the loss scaler state for a checkpoint."""
        return {
            "backend": self.backend,
            "loss_scale": self.loss_scale or "dynamic",
            "scaler": self._scaler.state_dict() if self._scaler else None,
            "apex": self._apex.state_dict() if self._apex else None,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state):
        """Restores the scaler state saved by a run with the same backend and loss scale."""
        if not state or state.get("backend") != self.backend:
            return
        if state.get("loss_scale") != (self.loss_scale or "dynamic"):
            return
        if self._scaler and state.get("scaler"):
            self._scaler.load_state_dict(state["scaler"])
        if self._apex and state.get("apex"):
            self._apex.load_state_dict(state["apex"])
        self._skipped = None
        self._skipped_host = int(state.get("skipped_steps", 0))

    def describe(self):
        """Returns a one-line description of the mixed precision mode for the log."""
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
