"""Training input speed: the resident loader vs per-sample NIfTI decoding, and the loader's share of a step.

Run: python benchmarks/train.py [--cases 8] [--demo-size 512] [--max-slices 64] [--size 256] [--batch-size 16]
     python benchmarks/train.py --stream-only [--stream-epochs 3] ...   (only (d), the stream mode)

In one run on a demo store (ctprep.demo + ctprep.convert) it measures
  (a) samples/s the resident loader delivers alone (gather + decode + augment, on the training device);
  (b) samples/s of the usual research Dataset: nibabel load of the .nii.gz, canonical reorientation, HU window,
      resize, 3-slice stack, per __getitem__, through a DataLoader with 2 workers;
  (c) training steps/s with batches from the loader vs one synthetic batch already in memory (loader overhead);
  (d) training samples/s over a few plan epochs with --resident stream (each epoch's rows read from the store one
      epoch ahead on a thread) vs resident, same model, plan and seed; the loader's share of the time (waiting for an
      epoch + gather/decode); on CUDA the issue's goal: stream >= 80 % of resident at size 256, batch 32.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ctmodel.augment import augment_batch
from ctmodel.batches import epoch_samples, iterate_batches, load_resident
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.device import autocast, resolve_device
from ctmodel.losses import DiceBCELoss
from ctmodel.nets import build_model, count_parameters
from ctprep.console import print_table
from ctprep.convert import ConvertConfig, convert
from ctprep.demo import DemoConfig, make_demo
from ctprep.store import SliceStore
from ctsample.plan import PlanConfig, make_plan

STREAM_GOAL = 0.80  # issue 16: stream keeps >= 80 % of resident training throughput on a GPU (size 256, batch 32)


def make_store(root: Path, args: argparse.Namespace) -> tuple[Path, list[tuple[Path, Path]]]:
    """Write demo NIfTI files and convert them; returns the store and the (image, mask) file pairs."""
    cases = make_demo(root / "raw", DemoConfig(cases=args.cases, size=args.demo_size, max_slices=args.max_slices,
                                               workers=2))
    convert(root / "raw", root / "store.zarr", ConvertConfig(size=args.size, workers=2), progress=False)
    pairs = [(Path(r.image), Path(r.mask)) for r in cases.itertuples() if isinstance(r.mask, str)]
    return root / "store.zarr", pairs


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


class NiftiSliceDataset(torch.utils.data.Dataset):
    """What research code does: decode the whole .nii.gz for every sample, window, resize, stack 3 slices."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int, window=(-1000.0, 400.0)) -> None:
        self.samples = [(img, msk, z) for img, msk in pairs for z in range(nib.load(str(img)).shape[2])]
        self.size, self.window = size, window

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, mask_path, z = self.samples[i]
        image = nib.as_closest_canonical(nib.load(str(img_path))).get_fdata(dtype=np.float32)
        mask = np.asarray(nib.as_closest_canonical(nib.load(str(mask_path))).dataobj) > 0
        lo, hi = self.window
        zs = [max(z - 1, 0), z, min(z + 1, image.shape[2] - 1)]
        stack = np.clip((image[:, :, zs] - lo) / (hi - lo), 0, 1).transpose(2, 1, 0)  # (3, Y, X)
        x = F.interpolate(torch.from_numpy(np.ascontiguousarray(stack))[None], size=(self.size, self.size),
                          mode="bilinear", antialias=True, align_corners=False)[0]
        y = F.interpolate(torch.from_numpy(mask[:, :, z].T.astype(np.float32))[None, None],
                          size=(self.size, self.size), mode="bilinear", align_corners=False)[0] > 0.5
        return x, y.float()


def baseline_rate(pairs, size: int, batch_size: int, n_batches: int) -> float:
    """Samples/s of the per-sample NIfTI Dataset through a 2-worker DataLoader."""
    dataset = NiftiSliceDataset(pairs, size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0), persistent_workers=False)
    batches = iter(loader)
    next(batches)  # workers started, first batch ready
    start = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    return n_batches * batch_size / (time.perf_counter() - start)


def loader_rate(data, samples, batch_size: int, n_batches: int, device: torch.device, augment: bool) -> float:
    """Samples/s of the resident loader: gather + decode (+ augment), nothing else."""
    gen = torch.Generator(device=device).manual_seed(0)
    batches = iterate_batches(data, samples, batch_size, torch.Generator().manual_seed(0))

    def one() -> None:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iterate_batches(data, samples, batch_size, torch.Generator().manual_seed(1))
            x, y = next(batches)
        if augment:
            augment_batch(x, y, gen)

    return batch_size / timed(one, n_batches, device)


def endless_batches(data, samples, batch_size: int):
    """Loader batches epoch after epoch (a fresh shuffle each), so any number of steps can be timed."""
    epoch = 0
    while True:
        yield from iterate_batches(data, samples, batch_size, torch.Generator().manual_seed(epoch))
        epoch += 1


def step_times(data, samples, model, batch_size: int, n_steps: int, device, precision: str,
               channels_last: bool = False) -> tuple[float, float]:
    """Median seconds per training step with loader batches and with one synthetic in-memory batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    loss_fn, gen = DiceBCELoss(), torch.Generator(device=device).manual_seed(0)
    size = data.images.shape[-1]
    synthetic = (torch.rand(batch_size, 3, size, size, device=device),
                 (torch.rand(batch_size, 1, size, size, device=device) > 0.9).float())
    batches = endless_batches(data, samples, batch_size)

    def step(x, y) -> None:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def loader_step() -> None:
        step(*augment_batch(*next(batches), gen))

    def synthetic_step() -> None:
        step(*synthetic)

    for _ in range(3):  # warm-up (torch.compile compiles here)
        loader_step(), synthetic_step()
    pairs = [(timed_once(loader_step, device), timed_once(synthetic_step, device)) for _ in range(n_steps)]
    return float(np.median([p[0] for p in pairs])), float(np.median([p[1] for p in pairs]))


def timed_once(fn, device: torch.device) -> float:
    """Seconds of one call (steps are interleaved loader/synthetic so load drift on a shared machine cancels)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def gpu_rows(data, samples, device: torch.device, precision: str, n_steps: int) -> list[tuple[str, object]]:
    """On CUDA: training samples/s with the loader, peak memory and utilisation at batch 16, 32 and 64."""
    rows: list[tuple[str, object]] = []
    for batch_size in (16, 32, 64):
        torch.manual_seed(0)
        model = build_model(ModelConfig()).to(device)
        torch.cuda.reset_peak_memory_stats(device)
        seconds, _ = step_times(data, samples, model, batch_size, n_steps, device, precision)
        rows += [(f"GPU batch {batch_size} {precision}: training samples/s", batch_size / seconds),
                 (f"GPU batch {batch_size} {precision}: peak memory MiB",
                  torch.cuda.max_memory_allocated(device) / 2**20),
                 (f"GPU batch {batch_size} {precision}: utilisation % (nvml, last sample)", gpu_utilisation(device))]
    for label, channels_last, compiled in (("channels_last", True, False), ("torch.compile", False, True)):
        torch.manual_seed(0)
        model = build_model(ModelConfig()).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        seconds, _ = step_times(data, samples, torch.compile(model) if compiled else model, 16, n_steps, device,
                                precision, channels_last=channels_last)
        rows.append((f"GPU batch 16 {precision} {label}: training samples/s", 16 / seconds))
    return rows


def gpu_utilisation(device: torch.device) -> object:
    """torch.cuda.utilization() when NVML is available, else 'n/a'."""
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # pynvml missing or not supported
        return "n/a"


def run_epochs(epoch_data, plan: list, batch_size: int, device: torch.device, precision: str) -> dict:
    """Train a fresh seeded dual encoder over the plan epochs with batches from ``epoch_data(e)``; samples/s and the
    seconds spent waiting for an epoch's rows and gathering batches (each batch synced, so timings are honest)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    loss_fn, gen = DiceBCELoss(), torch.Generator(device=device).manual_seed(0)
    wait = gather = 0.0
    samples = 0
    start = time.perf_counter()
    for epoch, rows in enumerate(plan, start=1):
        tick = time.perf_counter()
        data = epoch_data(epoch)
        wait += time.perf_counter() - tick
        batches = iterate_batches(data, epoch_samples(data, rows), batch_size, torch.Generator().manual_seed(epoch))
        while True:
            tick = time.perf_counter()
            batch = next(batches, None)
            sync(device)
            gather += time.perf_counter() - tick
            if batch is None:
                break
            x, y = augment_batch(*batch, gen)
            with autocast(device, precision):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += x.shape[0]
    sync(device)
    seconds = time.perf_counter() - start
    return {"rate": samples / seconds, "wait": wait, "gather": gather, "seconds": seconds, "samples": samples}


def read_rows(store: SliceStore, repeats: int = 3) -> list[tuple[str, object]]:
    """(d): ms per case (image + mask) of the three ways to read a case's kept rows, for three kept patterns: the
    whole case then the rows, the range kept[0]..kept[-1] then the rows, only the kept chunks."""
    cases = store.case_ids()[:3]
    rng = np.random.default_rng(0)
    n = min(int(store.index().groupby("case_id")["n_slices"].first()[c]) for c in cases)
    patterns = {"30 % scattered": np.sort(rng.choice(n, max(3, int(0.3 * n)), replace=False)),
                "16 % contiguous": np.arange(n // 2 - max(1, n // 12), n // 2 + max(1, n // 12)),
                "2 at each end": np.array([0, 1, n - 2, n - 1])}
    ways = {"whole": lambda c, k: (store.read_image_raw(c)[k], store.read_mask(c)[k]),
            "range": lambda c, k: (store.read_image_raw(c, slice(k[0], k[-1] + 1))[k - k[0]],
                                   store.read_mask(c, slice(k[0], k[-1] + 1))[k - k[0]]),
            "chunks": lambda c, k: (store.read_image_raw(c, k), store.read_mask(c, k))}
    rows = []
    for name, kept in patterns.items():
        ms = {}
        for way, read in ways.items():
            read(cases[0], kept)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                for case_id in cases:
                    read(case_id, kept)
            ms[way] = 1000 * (time.perf_counter() - start) / (repeats * len(cases))
        rows.append((f"(d) read {name} of {n} slices: ms per case whole / range / chunks (range/whole, "
                     "chunks/whole)", f"{ms['whole']:.1f} / {ms['range']:.1f} / {ms['chunks']:.1f} "
                     f"({ms['range'] / ms['whole']:.2f}, {ms['chunks'] / ms['whole']:.2f})"))
    return rows


def stream_rows(store: SliceStore, device: torch.device, args: argparse.Namespace) -> list[tuple[str, object]]:
    """(d): the same plan epochs trained from resident data and from the stream, in one run, with their ratio."""
    from ctmodel.runfolder import plan_epochs
    from ctmodel.stream import open_stream

    plan = plan_epochs(make_plan(store.index(), PlanConfig(epochs=args.stream_epochs, seed=0)).slices)
    cases = sorted(set().union(*(set(rows["case_id"].astype(str)) for rows in plan)))
    resident = load_resident(store, cases, device, show_progress=False)
    run_epochs(lambda _epoch: resident, plan[:1], args.batch_size, device, args.precision)  # warm-up, not timed
    stream, _val, text = open_stream(store, plan, [], device, ModelConfig(),
                                     TrainConfig(epochs=len(plan), resident="stream"))
    try:
        streamed = run_epochs(stream.epoch, plan, args.batch_size, device, args.precision)
    finally:
        stream.close()
    held = run_epochs(lambda _epoch: resident, plan, args.batch_size, device, args.precision)
    ratio = streamed["rate"] / held["rate"]
    rows = [("(d) plan epochs x rows (ratio 1.75)", f"{len(plan)} x {[len(r) for r in plan]}"),
            ("(d) stream", text),
            ("(d) resident: training samples/s", held["rate"]), ("(d) stream: training samples/s", streamed["rate"]),
            ("(d) stream / resident samples/s", ratio),
            ("(d) stream: waiting for epochs' rows, s (of the run)", f"{streamed['wait']:.2f} of "
                                                                      f"{streamed['seconds']:.2f}"),
            ("(d) loader share of step time, resident, %", 100 * (held["wait"] + held["gather"]) / held["seconds"]),
            ("(d) loader share of step time, stream, %",
             100 * (streamed["wait"] + streamed["gather"]) / streamed["seconds"])]
    if device.type == "cuda":
        verdict = "met" if ratio >= STREAM_GOAL else "NOT met"
        rows.append((f"(d) GPU goal stream >= {STREAM_GOAL:.0%} of resident (size {args.size}, batch "
                     f"{args.batch_size}; the goal is stated at 256 / 32)", f"{ratio:.0%}: {verdict}"))
    return rows + read_rows(store)


def main() -> None:
    """Build the demo store, run (a), (b), (c) and (d) and print figures with their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--demo-size", type=int, default=512, help="in-plane size of the demo NIfTI files")
    parser.add_argument("--max-slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="stored in-plane size S")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--loader-batches", type=int, default=50)
    parser.add_argument("--baseline-batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="interleaved loader/synthetic step pairs timed")
    parser.add_argument("--stream-epochs", type=int, default=3, help="(d): plan epochs trained in each mode")
    parser.add_argument("--stream-only", action="store_true", help="run only (d), the stream mode")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        store_path, pairs = make_store(Path(tmp), args)
        store = SliceStore.open(store_path)
        streamed = stream_rows(store, device, args)
        if args.stream_only:
            print_table(f"benchmarks/train.py (d) on {device} ({args.cases} demo cases, S={args.size}, batch "
                        f"{args.batch_size})", ["measure", "value"], streamed)
            return
        index = store.index()
        labeled = sorted(index.loc[index["labeled"], "case_id"].astype(str).unique())
        data = load_resident(store, labeled, device, show_progress=False)
        samples = epoch_samples(data, index[index["case_id"].isin(labeled)])
        a0 = loader_rate(data, samples, args.batch_size, args.loader_batches, device, augment=False)
        a = loader_rate(data, samples, args.batch_size, args.loader_batches, device, augment=True)
        b = baseline_rate(pairs, args.size, args.batch_size, args.baseline_batches)
        torch.manual_seed(0)
        model = build_model(ModelConfig()).to(device)
        t_loader, t_synth = step_times(data, samples, model, args.batch_size, args.steps, device, args.precision)
        extra = gpu_rows(data, samples, device, args.precision, args.steps) if device.type == "cuda" else []
    overhead = (t_loader - t_synth) / t_synth
    gather_share = (args.batch_size / a) / t_synth
    print_table(f"benchmarks/train.py on {device} ({len(labeled)} demo cases, {len(samples)} slices, "
                f"S={args.size}, batch {args.batch_size}, {count_parameters(model):,} params)",
                ["measure", "value"], [
        ("(a) resident loader, gather+decode only, samples/s", a0),
        ("(a) resident loader, gather+decode+augment, samples/s", a),
        ("(b) per-sample NIfTI Dataset, DataLoader 2 workers, samples/s", b),
        ("(a) gather+decode / (b)", a0 / b),
        ("(a) gather+decode+augment / (b)", a / b),
        ("(c) train step with loader batches, s", t_loader),
        ("(c) train step with a synthetic in-memory batch, s", t_synth),
        ("(c) loader overhead (step time difference), %", 100 * overhead),
        ("(c) loader time per batch / synthetic step time, %", 100 * gather_share),
        ("steps/s with loader", 1 / t_loader), ("steps/s synthetic", 1 / t_synth), *extra, *streamed])


if __name__ == "__main__":
    main()
