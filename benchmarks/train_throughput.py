"""EN-B3 training and eval throughput: this project's real train step against torchvision and timm.

Every model trains on one fixed synthetic batch (so the loss must fall) with SGD (momentum 0.9,
nesterov, weight decay 1e-5). Ours runs exactly what tools/train_net.py runs: the model from
pycls.core.builders and the EN-B3 config, construct_optimizer, Amp, the memory format of
pycls.core.device, the loss of build_loss_fun on smoothed one-hot labels and trainer.train_step.
The peers run a plain eager step (torch.autocast, GradScaler for fp16, cross-entropy). Our eval
runs, as the test epoch does, on a copy with BN folded into the convs (net.fold_bn, untimed).

All the settings are timed in one process, interleaved (A, B, C, A, B, C, ...) over a few
rounds, so a busy machine slows every setting alike; the table gives the median and the best
round. Peak memory is max_memory_allocated on an accelerator; on the CPU it is the peak RSS of
a fresh child process per setting (a process peak RSS cannot be reset in-process).

    python benchmarks/train_throughput.py [--models pycls,torchvision,timm]
        [--formats channels_last,contiguous] [--variants default,foreach,no-inplace,...]
        [--batch 16] [--im-size 224] [--amp auto|off|bf16|fp16] [--compile] [--device auto]

--amp auto (the default) makes the trainer's choice for every model: bf16 on a CPU with native
bf16, float32 on one without (emulated bf16 is slower), fp16 on accelerators. The variants O2
and O0 run ours with the config's O2 (AMP.DTYPE auto) or in float32, whatever --amp says.

timm is optional (pip install timm); it is skipped with a note when it does not import. No
weights are downloaded. Numbers only; nothing about time is asserted.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time

import torch
import torch.nn.functional as F

import pycls.core.builders as builders
import pycls.core.config as config
import pycls.core.device as devices
import pycls.core.net as net
import pycls.core.optimizer as optim
import pycls.core.trainer as trainer
from pycls.core.amp import Amp
from pycls.core.config import cfg

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CFG = os.path.join(REPO_DIR, "configs/dds_baselines/effnet/EN-B3_dds_8gpu.yaml")
NUM_CLASSES = 1000
MODELS = ("pycls", "torchvision", "timm")
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
AMP_DTYPES = {"auto": None, "off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Variants of our step (each a row of its own): what changes against the project's defaults
VARIANTS = {
    "default": {},
    "forloop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "no-inplace": {"MODEL.ACTIVATION_INPLACE": False},
    "compile": {"MODEL.COMPILE": True},
    # The config's own O2 (the seed's perf configs) and float32, whatever --amp says
    "O2": {"AMP.OPT_LEVEL": "O2", "AMP.DTYPE": "auto"},
    "O0": {"AMP.OPT_LEVEL": "O0"},
}


def parse_args(argv=None):
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arg = parser.add_argument
    arg("--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS))
    arg("--formats", default=",".join(FORMATS), help="comma list of " + ", ".join(FORMATS))
    arg("--variants", default="default", help="our rows: comma list of " + ", ".join(VARIANTS))
    arg("--batch", type=int, default=16, help="images per step")
    arg("--im-size", type=int, default=224, help="image height and width")
    arg("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    arg("--steps", type=int, default=2, help="timed steps per setting per round")
    arg("--rounds", type=int, default=5, help="interleaved rounds")
    arg("--warmup", type=int, default=2, help="untimed steps per setting first (>= 1)")
    arg("--device", default="auto", help="auto, cpu, gpu (cuda) or npu")
    arg(
        "--amp",
        choices=AMP_DTYPES,
        default="auto",
        help="mixed precision dtype (auto: as the trainer)",
    )
    arg("--compile", action="store_true", help="wrap every model in torch.compile")
    arg("--lr", type=float, default=0.01, help="SGD learning rate of every model")
    arg("--phases", default="train,eval", help="comma list of train, eval")
    arg("--cfg", default=DEFAULT_CFG, help="our EN-B3 config (NUM_CLASSES is set to 1000)")
    arg("--check-loss-falls", action="store_true", help="exit 1 unless every loss fell")
    arg("--no-memory", action="store_true", help="skip the CPU peak memory child processes")
    arg("--opt-bench", type=int, default=0, help="also time N optimizer steps per impl")
    arg("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = _choices(args.models, MODELS, "--models")
    args.formats = _choices(args.formats, FORMATS, "--formats")
    args.variants = _choices(args.variants, VARIANTS, "--variants")
    args.phases = _choices(args.phases, ("train", "eval"), "--phases")
    if min(args.batch, args.im_size, args.steps, args.rounds, args.warmup) < 1:
        parser.error("--batch, --im-size, --steps, --rounds and --warmup must be 1 or more")
    return args


def _choices(text, valid, flag):
    """Splits a comma list and checks every item is valid."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in valid]
    if bad or not items:
        sys.exit(
            "error: {} takes a comma list of {}; got {!r}".format(flag, ", ".join(valid), text)
        )
    return items


class Setting:
    """One model in one memory format: its train and eval step functions and measurements."""

    def __init__(self, name, fmt, variant, model, train_fn, eval_fn, notes=""):
        self.name, self.fmt, self.variant, self.notes = name, fmt, variant, notes
        self.model, self.train_fn, self.eval_fn = model, train_fn, eval_fn
        self.params = sum(p.numel() for p in model.parameters())
        self.ips = {"train": [], "eval": []}
        self.cpu_ips = {"train": [], "eval": []}
        self.first_s = {"train": float("nan"), "eval": float("nan")}
        self.mem_mb = {"train": float("nan"), "eval": float("nan")}
        self.loss_first = self.loss_last = float("nan")
        self.last_loss_tensor = None
        self.prepare_eval, self.fold_s = None, float("nan")

    @property
    def label(self):
        """Returns the row label."""
        return self.name if self.name != "pycls" else "pycls[{}]".format(self.variant)

    def prepare(self, phase):
        """Untimed work before a phase's steps (our eval: fold BN into a copy)."""
        if phase == "eval" and self.prepare_eval:
            self.fold_s = self.prepare_eval()

    def run(self, phase):
        """Runs one step of a phase; returns the loss tensor (train) or the logits (eval)."""
        if phase == "train":
            self.model.train()
            return self.train_fn()
        self.model.eval()
        return self.eval_fn()


def _amp_opts(amp):
    """Returns the AMP overrides of an --amp choice (native torch.amp; apex is left to
    AMP.BACKEND auto)."""
    if amp == "off":
        return {"AMP.OPT_LEVEL": "O0"}
    return {"AMP.OPT_LEVEL": "O1", "AMP.DTYPE": "bfloat16" if amp == "bf16" else "float16"}


def resolve_amp(args, device):
    """Returns the --amp choice auto stands for: what the trainer's Amp picks for O1 with
    AMP.DTYPE auto on this device (off on a CPU without native bf16), and its log line."""
    config.load_cfg(args.cfg, ["AMP.OPT_LEVEL", "O1", "AMP.DTYPE", "auto"])
    amp = Amp(device)
    names = {torch.float32: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return names[amp.dtype], amp.describe()


def _rebuild_optimizer(optimizer, impl):
    """Returns the optimizer, or a new one on the same groups with another step implementation."""
    if not impl:
        return optimizer
    groups = [{k: v for k, v in g.items() if k not in impl} for g in optimizer.param_groups]
    return type(optimizer)(groups, **impl)


def _drop_notes(model):
    """Returns the dropout and drop-path rates a model trains with (they cost a little time)."""
    dropout = max((m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)), default=0.0)
    names = ("StochasticDepth", "DropPath")
    paths = [m for m in model.modules() if type(m).__name__ in names]
    path = max((getattr(m, "p", getattr(m, "drop_prob", 0.0)) for m in paths), default=0.0)
    path = max(path, float(getattr(model, "params", {}).get("dc_ratio", 0.0)))
    return "dropout {:g}, drop path {:g}".format(dropout, path)


def _impl_name(optimizer):
    """Names the step implementation of an optimizer (fused, foreach or for-loop)."""
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "fused"
    return "foreach" if group.get("foreach") else "for-loop"


def build_ours(args, device, fmt, variant, inputs, labels):
    """Builds our EN-B3 the way the trainer does and returns its Setting."""
    opts = {"MODEL.NUM_CLASSES": NUM_CLASSES, "MODEL.MEMORY_FORMAT": fmt, "OPTIM.BASE_LR": args.lr}
    opts.update({"MODEL.COMPILE": args.compile}, **_amp_opts(args.amp))
    opts.update({k: v for k, v in VARIANTS[variant].items() if "." in k})
    impl = {k: v for k, v in VARIANTS[variant].items() if "." not in k}
    config.load_cfg(args.cfg, [x for kv in opts.items() for x in kv])
    model = builders.build_model()
    model = model.to(device, memory_format=devices.memory_format(device))
    loss_fun = builders.build_loss_fun().to(device)
    optimizer = _rebuild_optimizer(optim.construct_optimizer(model, device), impl)
    amp = Amp(device)
    model, optimizer = amp.prepare(model, optimizer)
    step_model = torch.compile(model) if cfg.MODEL.COMPILE else model
    notes = "{}; sgd {}".format(_drop_notes(model), _impl_name(optimizer))

    def train_fn():
        labels_one_hot = net.smooth_one_hot_labels(labels)
        return trainer.train_step(step_model, loss_fun, optimizer, amp, inputs, labels_one_hot)[1]

    folded = []

    def fold():
        # As the trainer's test epoch: a BN-folded copy of the model as trained so far, made
        # once per test epoch, so untimed here
        start = time.perf_counter()
        folded[:] = [net.fold_bn(model)]
        return time.perf_counter() - start

    def eval_fn():
        with torch.inference_mode(), amp.autocast():
            return folded[0](inputs)

    setting = Setting("pycls", fmt, variant, model, train_fn, eval_fn, notes)
    setting.prepare_eval = fold
    return setting


def build_peer_model(name):
    """Builds a peer's EN-B3 without weights; returns None when its library is missing."""
    if name == "torchvision":
        import torchvision

        return torchvision.models.efficientnet_b3(weights=None, num_classes=NUM_CLASSES)
    try:
        import timm
    except ImportError:
        return None
    return timm.create_model("efficientnet_b3", pretrained=False, num_classes=NUM_CLASSES)


def build_peer(args, device, name, fmt, inputs, labels):
    """Builds a peer's plain eager step (SGD, autocast, GradScaler for fp16); returns a Setting."""
    model = build_peer_model(name)
    if model is None:
        return None
    model = model.to(device, memory_format=FORMATS[fmt])
    sgd = {"lr": args.lr, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-5}
    optimizer = torch.optim.SGD(model.parameters(), **sgd)
    dtype = AMP_DTYPES[args.amp]
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    step_model = torch.compile(model) if args.compile else model
    notes = "{}; sgd {}".format(_drop_notes(model), _impl_name(optimizer))

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype))

    def train_fn():
        with autocast():
            loss = F.cross_entropy(step_model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.detach()

    def eval_fn():
        with torch.inference_mode(), autocast():
            return step_model(inputs)

    return Setting(name, fmt, "default", model, train_fn, eval_fn, notes)


def make_batch(args, device):
    """Returns one fixed synthetic batch: inputs per memory format, and int labels."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.im_size, args.im_size, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,), generator=gen).to(device)
    inputs = {f: images.to(device, memory_format=FORMATS[f]) for f in args.formats}
    return inputs, labels


def build_settings(args, device):
    """Builds every (model, format, variant) setting asked for; prints a note for skipped ones."""
    inputs, labels = make_batch(args, device)
    settings = []
    for name in args.models:
        for fmt in args.formats:
            if name == "pycls":
                for variant in args.variants:
                    settings.append(build_ours(args, device, fmt, variant, inputs[fmt], labels))
                continue
            setting = build_peer(args, device, name, fmt, inputs[fmt], labels)
            if setting is None:
                print("note: timm does not import; skipping it (pip install timm to compare)")
                break
            settings.append(setting)
    return settings


def timed(fn, steps, device):
    """Runs fn steps times between device syncs; returns (seconds, CPU seconds, last result)."""
    devices.synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        out = fn()
    devices.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, out


def warm_up(setting, args, device):
    """Runs the untimed steps; times the first one (compile and autotuning land there)."""
    for phase in args.phases:
        devices.reset_peak_memory(device)
        setting.prepare(phase)
        seconds, _, out = timed(functools.partial(setting.run, phase), 1, device)
        setting.first_s[phase] = seconds
        if phase == "train":
            setting.loss_first = float(out)
        if args.warmup > 1:
            timed(functools.partial(setting.run, phase), args.warmup - 1, device)


def run_rounds(settings, args, device):
    """Times every setting and phase in turn, round after round (interleaved)."""
    accelerator = devices.has_accelerator(device)
    for _ in range(args.rounds):
        for setting in settings:
            for phase in args.phases:
                devices.reset_peak_memory(device)
                setting.prepare(phase)
                run = functools.partial(setting.run, phase)
                seconds, cpu_seconds, out = timed(run, args.steps, device)
                setting.ips[phase].append(args.batch * args.steps / seconds)
                setting.cpu_ips[phase].append(args.batch * args.steps / max(cpu_seconds, 1e-9))
                if accelerator:
                    peak = [devices.max_memory_mb(device), setting.mem_mb[phase]]
                    setting.mem_mb[phase] = max(m for m in peak if m == m)
                if phase == "train":
                    setting.last_loss_tensor = out
    for setting in settings:
        if setting.last_loss_tensor is not None:
            setting.loss_last = float(setting.last_loss_tensor)


def child_memory(setting, argv):
    """Measures a setting's CPU peak RSS (MB) in a fresh process; returns {phase: MB}."""
    pick = ["--models", setting.name, "--formats", setting.fmt, "--variants", setting.variant]
    cmd = [sys.executable, os.path.abspath(__file__)] + list(argv) + pick + ["--memory-child"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("memory_mb: ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        print("note: memory child for {} failed: {}".format(setting.label, tail))
        return {}
    return json.loads(lines[-1][len("memory_mb: ") :])


def peak_rss_mb():
    """Returns this process's peak RSS in MB (VmHWM: unlike ru_maxrss, not inherited)."""
    try:
        with open("/proc/self/status") as f:
            kb = [int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")]
        return kb[0] / 1024
    except (OSError, IndexError, ValueError):
        # Elsewhere ru_maxrss, which counts the parent's RSS at fork where exec keeps it
        return devices.max_memory_mb(torch.device("cpu"))


def memory_child_main(args, device):
    """Child process: eval steps, then train steps, printing the peak RSS after each."""
    setting = build_settings(args, device)[0]
    mem = {}
    for phase in ("eval", "train"):
        if phase in args.phases:
            setting.prepare(phase)
            timed(functools.partial(setting.run, phase), 2, device)
            mem[phase] = peak_rss_mb()
    print("memory_mb: " + json.dumps(mem))


def optimizer_bench(args, device):
    """Times our optimizer's step for EN-B3: the project's choice and the others, interleaved."""
    config.load_cfg(args.cfg, ["MODEL.NUM_CLASSES", NUM_CLASSES])
    model = builders.build_model().to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    default = optim.construct_optimizer(model, device)
    opts = {"default ({})".format(_impl_name(default)): default}
    for name in ("forloop", "foreach"):
        opts[name] = _rebuild_optimizer(optim.construct_optimizer(model, device), VARIANTS[name])
    times = {k: [] for k in opts}
    for opt in opts.values():
        opt.step()
    for _ in range(args.rounds):
        for k, opt in opts.items():
            seconds, _, _ = timed(opt.step, args.opt_bench, device)
            times[k].append(1000 * seconds / args.opt_bench)
    tensors = len(list(model.parameters()))
    print("\nOptimizer step of our EN-B3 SGD ({} tensors), ms per step".format(tensors))
    print("{:<18} {:>10} {:>10}".format("impl", "median", "best"))
    for k, ms in times.items():
        print("{:<18} {:>10.2f} {:>10.2f}".format(k, statistics.median(ms), min(ms)))


def machine(device):
    """Describes the machine: accelerator name, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        name = names[0] if names else name
    except OSError:
        pass
    return "{} ({} cores)".format(name, os.cpu_count())


def versions():
    """Returns the versions of torch, torchvision and timm (when installed)."""
    import torchvision

    out = "torch {}, torchvision {}".format(torch.__version__, torchvision.__version__)
    try:
        import timm

        return out + ", timm {}".format(timm.__version__)
    except ImportError:
        return out + ", timm not installed"


def _fmt(x, spec):
    """Formats a number, or '-' for NaN."""
    return "-" if x != x else format(x, spec)


# Table columns: (title, width); the first two are left-aligned
_COLUMNS = (
    ("model", 18), ("format", 13), ("params", 7), ("train img/s", 11), ("best", 7),
    ("img/cpu-s", 9), ("eval img/s", 10), ("best", 7), ("img/cpu-s", 9), ("1st step", 8),
    ("train MB", 8), ("eval MB", 7), ("loss 1st->last", 14), ("tr/peer", 7), ("ev/peer", 7),
)  # fmt: skip


def _line(cells):
    """Formats one table line."""
    out = []
    for i, (cell, (_, width)) in enumerate(zip(cells, _COLUMNS)):
        out.append(cell.ljust(width) if i < 2 else cell.rjust(width))
    return " ".join(out)


def _stats(values):
    """Returns (median, best) of a list of rates, NaN when empty."""
    if not values:
        return float("nan"), float("nan")
    return statistics.median(values), max(values)


def _row(s, best_peer):
    """Returns the table cells of one setting."""
    cells = [s.label, s.fmt, "{:.2f}M".format(s.params / 1e6)]
    ratios = []
    for phase in ("train", "eval"):
        med, top = _stats(s.ips[phase])
        cells += [_fmt(med, ".2f"), _fmt(top, ".2f"), _fmt(_stats(s.cpu_ips[phase])[0], ".2f")]
        ratios.append(_fmt(med / best_peer.get(phase, float("nan")), ".2f"))
    cells += [_fmt(s.first_s["train"], ".2f") + "s"]
    cells += [_fmt(s.mem_mb["train"], ".0f"), _fmt(s.mem_mb["eval"], ".0f")]
    cells += ["{}->{}".format(_fmt(s.loss_first, ".3f"), _fmt(s.loss_last, ".3f"))]
    return cells + ratios


def print_table(settings, args, device):
    """Prints the results table and the ratios to the best peer."""
    print("\nEN-B3 on {} {}: {}".format(device.type, machine(device), versions()))
    mode = "torch.compile" if args.compile else "eager"
    msg = "batch {}, {}px, {} threads, amp {}, {}; {} rounds x {} steps after {} warm-up steps"
    threads = torch.get_num_threads()
    print(msg.format(args.batch, args.im_size, threads, args.amp, mode, args.rounds, args.steps,
                     args.warmup))  # fmt: skip
    best_peer = {}
    for phase in args.phases:
        peers = [_stats(s.ips[phase])[0] for s in settings if s.name != "pycls"]
        best_peer[phase] = max(peers, default=float("nan"))
    print(_line([title for title, _ in _COLUMNS]))
    for s in settings:
        print(_line(_row(s, best_peer)))
    mem_kind = "max allocated" if devices.has_accelerator(device) else "peak RSS of a child process"
    notes = (
        "img/s: median and best round (wall clock); img/cpu-s: median images per CPU-second of "
        "this process (less sensitive to other load); 1st step: the first train step; "
        "MB: {}; x/peer: median img/s over the best peer's median"
    )
    print(textwrap.fill(notes.format(mem_kind), 100))
    for s in settings:
        fold = "" if s.fold_s != s.fold_s else "; eval on a BN-folded copy ({:.2f}s to fold)"
        print("  {} {}: {}{}".format(s.label, s.fmt, s.notes, fold.format(s.fold_s)))
    print("  our default memory format here (MODEL.MEMORY_FORMAT auto): " + args.auto_format)
    print("  " + args.amp_note)


def check_losses(settings):
    """Returns the labels of the settings whose loss did not fall over the steps."""
    return [s.label + " " + s.fmt for s in settings if not s.loss_last < s.loss_first]


def main(argv=None):
    """Runs the benchmark and prints the table."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config.reset_cfg()
    device = devices.setup(args.device)
    auto = devices.memory_format(device) == torch.channels_last
    args.auto_format = "channels_last" if auto else "contiguous"
    args.amp_note = "--amp " + args.amp
    if args.amp == "auto":
        args.amp, why = resolve_amp(args, device)
        args.amp_note = "--amp auto is {} here ({})".format(args.amp, why)
    if args.memory_child:
        return memory_child_main(args, device)
    settings = build_settings(args, device)
    if args.opt_bench:
        optimizer_bench(args, device)
    for setting in settings:
        warm_up(setting, args, device)
    run_rounds(settings, args, device)
    if not devices.has_accelerator(device) and not args.no_memory:
        for setting in settings:
            setting.mem_mb.update(child_memory(setting, argv))
    print_table(settings, args, device)
    if args.check_loss_falls:
        flat = check_losses(settings)
        if flat:
            sys.exit("error: the loss did not fall for: {}".format(", ".join(flat)))
        print("loss fell for every setting")


if __name__ == "__main__":
    main()
