"""The local store under concurrent registrations of one name and a concurrent reader."""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from pathlib import Path

import torch
from zoo_models import outputs, save_tiny, tiny_factorized

import trp_zoo
from trp_zoo.zoo.store import store_dir

NAME = "race_model"
WRITERS = 4
CALLS_PER_WRITER = 40
MIN_OVERLAPPING_READS = 5
DEADLINE_S = 300.0


def _register(sources: list[str], calls: int, errors: mp.Queue, active, overlapped) -> None:
    """Register at least `calls` times, and on until the reader has overlapped enough."""
    with active.get_lock():
        active.value += 1
    deadline = time.monotonic() + DEADLINE_S
    i = 0
    while i < calls or (overlapped.value < MIN_OVERLAPPING_READS and time.monotonic() < deadline):
        try:
            trp_zoo.register_local(sources[i % len(sources)], NAME)
        except Exception:  # the test collects every failure
            errors.put(traceback.format_exc(limit=3))
        i += 1
    with active.get_lock():
        active.value -= 1


def _read(expected: list[torch.Tensor], stop, errors: mp.Queue, active, overlapped) -> None:
    """Load the name in a loop; count the loads that began and ended while writers ran."""
    while not stop.is_set():
        writing = active.value > 0
        try:
            out = outputs(trp_zoo.load(NAME))
            if not any(torch.equal(out, e) for e in expected):
                errors.put("loaded a model that is neither registered checkpoint")
        except Exception:
            errors.put(traceback.format_exc(limit=3))
        if writing and active.value > 0:
            overlapped.value += 1


def test_concurrent_registrations_are_atomic_for_a_reader(tmp_path: Path) -> None:
    """4 processes register two different checkpoints under one name (40 times each, and on
    until 5 loads have raced them) while a
    fifth loads the name in a loop: no error anywhere, every load is one of the two
    checkpoints (config and weights a matching pair), and nothing is left over."""
    models = [tiny_factorized(0, "channel"), tiny_factorized(1, "spatial")]
    sources = [str(save_tiny(tmp_path / f"ckpt{i}", m)) for i, m in enumerate(models)]
    expected = [outputs(m) for m in models]
    trp_zoo.register_local(sources[0], NAME)
    ctx = mp.get_context("spawn")  # fork after torch started threads can deadlock
    errors, stop = ctx.Queue(), ctx.Event()
    active, overlapped = ctx.Value("i", 0), ctx.Value("i", 0)
    reader = ctx.Process(target=_read, args=(expected, stop, errors, active, overlapped))
    writers = [
        ctx.Process(
            target=_register,
            args=(sources[::step], CALLS_PER_WRITER, errors, active, overlapped),
        )
        for step in (1, -1, 1, -1)[:WRITERS]
    ]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=600)
    stop.set()
    reader.join(timeout=120)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert [w.exitcode for w in writers] == [0] * WRITERS and reader.exitcode == 0
    assert not found, f"{len(found)} failures, first:\n{found[0]}"
    assert overlapped.value >= MIN_OVERLAPPING_READS  # the reader really raced the writers
    assert sorted(p.name for p in store_dir().iterdir()) == [f".{NAME}.lock", NAME]
    assert any(torch.equal(outputs(trp_zoo.load(NAME)), e) for e in expected)
