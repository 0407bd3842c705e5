"""The catalogue of malformed files: every file mamlkit reads can be damaged or hand-edited,
and each case ends in one line on stderr naming the file and the fix, exit code 2, no
traceback, and every file of the run left as it was.

 1. config.yaml with a YAML syntax error (train --resume)
 2. config.yaml with an unknown key (train --resume)
 3. config.yaml with a mistyped value (eval)
 4. config.yaml emptied (train --resume)
 5. config.yaml replaced by binary garbage (eval)
 6. metrics.jsonl with a garbled line in the middle (train --resume, plot)
 7. metrics.jsonl replaced by binary garbage (plot)
 8. metrics.jsonl with a record that has no step (train --resume)
 9. the newest checkpoint truncated (train --resume names the intact older step)
10. a flipped bit in the newest checkpoint's tensor data (train --resume)
11. a checkpoint whose metadata lacks the optimiser state (train --resume)
12. a checkpoint whose metadata step is not a number (eval --checkpoint latest)
13. every checkpoint damaged (train --resume: nothing older to offer)
14. a flipped bit in model.safetensors (eval)
15. model.safetensors with a garbled header (eval)
16. a damaged status.json or eval.json: `mamlkit runs` still lists every run
17. a damaged newer checkpoint: --resume --checkpoint STEP continues from the older one
    bit-identically and keeps the damaged file aside
18. Omniglot archive members: a decompression bomb and a truncated PNG; a MiniImagenet image
    that is a decompression bomb
19. config.yaml describing another network than its weights (eval, train --resume): the
    line names the parameters that differ
"""

from __future__ import annotations

import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mamlkit.checkpoint import load_checkpoint, save_checkpoint
from mamlkit.cli import main
from mamlkit.data import load_miniimagenet
from mamlkit.data.errors import DataError
from mamlkit.data.omniglot import _load_omniglot

from .test_data_miniimagenet import CLASSES, _clone_csv_root, layouts  # noqa: F401
from .test_data_omniglot import SYNTH_COUNTS, _make_synthetic

SETS = ["train.iterations=6", "train.checkpoint_every=2", "train.log_every=1"]
SETS += ["train.tensorboard=false", "train.threads=1"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A finished 6-step sine run with checkpoints at 2, 4, 6 and an eval.json."""
    run = tmp_path_factory.mktemp("pristine") / "run"
    argv = ["train", "sine_maml", "--out", str(run), "--no-progress"]
    for s in SETS:
        argv += ["--set", s]
    assert main(argv) == 0
    assert main(["eval", str(run), "--tasks", "3"]) == 0
    return run


@pytest.fixture
def run(pristine, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    return copy


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".mamlkit.lock"
    }


def checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}.safetensors"


def flip_data_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    data[start + (len(data) - start) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def rewrite_meta(path: Path, change) -> None:
    """Re-save a checkpoint with edited metadata (and a valid checksum: what a hand edit
    with the safetensors API produces)."""
    tensors, meta = load_checkpoint(path)
    change(meta)
    save_checkpoint(path, tensors, meta)


def garble_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _narrow_second_layer(run: Path) -> None:
    text = (run / "config.yaml").read_text()
    assert "  - 40\n  - 40\n" in text
    (run / "config.yaml").write_text(text.replace("  - 40\n  - 40\n", "  - 40\n  - 30\n", 1))


RESUME = ("train", "--resume", "{run}", "--no-progress", "--set", "train.iterations=8")
EVAL = ("eval", "{run}", "--tasks", "3")
CASES = {  # number: (how to damage the run, the command, what the line must name)
    "01": (lambda r: (r / "config.yaml").write_text("task: {name: sine\n"), RESUME, "config.yaml"),
    "02": (
        lambda r: (r / "config.yaml").write_text((r / "config.yaml").read_text() + "extra: 1\n"),
        RESUME,
        "config.yaml",
    ),
    "03": (
        lambda r: (r / "config.yaml").write_text(
            (r / "config.yaml").read_text().replace("iterations: 6", "iterations: six")
        ),
        EVAL,
        "config.yaml",
    ),
    "04": (lambda r: (r / "config.yaml").write_text(""), RESUME, "config.yaml"),
    "05": (lambda r: (r / "config.yaml").write_bytes(b"\xff\xfe\x00garbage"), EVAL, "config.yaml"),
    "06": (lambda r: garble_line(r / "metrics.jsonl", 2, '{"step": 2, "lo'), RESUME, "line 2"),
    "06-plot": (
        lambda r: garble_line(r / "metrics.jsonl", 2, "\x00\x00"),
        ("plot", "{run}"),
        "metrics.jsonl line 2",
    ),
    "07": (
        lambda r: (r / "metrics.jsonl").write_bytes(b"\x80\x81\x82\xff"),
        ("plot", "{run}"),
        "metrics.jsonl",
    ),
    "08": (lambda r: garble_line(r / "metrics.jsonl", 1, '{"loss": 1.0}'), RESUME, "metrics.jsonl"),
    "09": (
        lambda r: checkpoint(r, 6).write_bytes(checkpoint(r, 6).read_bytes()[:1000]),
        RESUME,
        "--checkpoint 4",
    ),
    "10": (lambda r: flip_data_bit(checkpoint(r, 6)), RESUME, "--checkpoint 4"),
    "11": (
        lambda r: rewrite_meta(checkpoint(r, 6), lambda m: m.pop("optimizer")),
        RESUME,
        "step-00000006",
    ),
    "12": (
        lambda r: rewrite_meta(checkpoint(r, 6), lambda m: m.update(step="six")),
        ("eval", "{run}", "--tasks", "3", "--checkpoint", "latest"),
        "step-00000006",
    ),
    "13": (
        lambda r: [flip_data_bit(checkpoint(r, s)) for s in (2, 4, 6)],
        RESUME,
        "no older intact checkpoint is left",
    ),
    "14": (lambda r: flip_data_bit(r / "model.safetensors"), EVAL, "model.safetensors"),
    "15": (
        lambda r: (r / "model.safetensors").write_bytes(
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64)
        ),
        EVAL,
        "model.safetensors",
    ),
    "19": (_narrow_second_layer, EVAL, "shapes differ for model.net.2.bias, model.net.2.weight"),
    # the checkpoint holds the config it was trained with: the edited key is named
    "19-resume": (_narrow_second_layer, RESUME, "model.hidden is [40, 30]"),
}


@pytest.mark.parametrize("number", sorted(CASES))
def test_malformed_file(run, capsys, number):
    damage, command, needle = CASES[number]
    damage(run)
    before = snapshot(run)
    capsys.readouterr()
    code = main([part.format(run=run) for part in command])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mamlkit: error:") and needle in lines[0], lines[0]
    assert snapshot(run) == before


def test_16_runs_lists_every_readable_run_beside_damaged_ones(pristine, tmp_path, capsys):
    for name in ("a", "b", "c"):
        shutil.copytree(pristine, tmp_path / name)
    (tmp_path / "a" / "status.json").write_text('{"status": "runn')
    (tmp_path / "b" / "eval.json").write_bytes(b"\xff\x00")
    (tmp_path / "c" / "status.json").write_text('["not", "a", "mapping"]')
    capsys.readouterr()
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()[1:]  # under the header row
    rows = {Path(line.split()[0]).name: line for line in out}
    assert set(rows) == {"a", "b", "c"}
    assert "damaged" in rows["a"] and "eval.json" in rows["b"] and "damaged" in rows["c"]


def test_17_resume_from_the_older_checkpoint_when_the_newest_is_damaged(pristine, tmp_path):
    straight = tmp_path / "straight"
    shutil.copytree(pristine, straight)
    assert (
        main(["train", "--resume", str(straight), "--no-progress", "--set", "train.iterations=8"])
        == 0
    )
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    flip_data_bit(checkpoint(run, 6))
    damaged = checkpoint(run, 6).read_bytes()
    argv = ["train", "--resume", str(run), "--no-progress", "--checkpoint", "4"]
    assert main([*argv, "--set", "train.iterations=8"]) == 0
    assert (run / "checkpoints" / "step-00000006.safetensors.damaged").read_bytes() == damaged
    assert (run / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    a, b = load_file(straight / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height 1-bit pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "payload,word",
    [
        (_png_header_only(60000, 60000), "bomb"),
        (_png_header_only(9000, 9000), "bomb"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "cannot decode"),
    ],
    ids=["bomb-beyond-pillow-limit", "bomb-below-pillow-limit", "truncated"],
)
def test_18_damaged_image_inside_an_archive(tmp_path, payload, word):
    root = _make_synthetic(tmp_path / "data", zips=True, folders=False)
    archive = root / "images_evaluation.zip"
    member = "images_evaluation/Gamma/character01/0005_02.png"
    with zipfile.ZipFile(archive) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[member] = payload
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(DataError) as info:
        _load_omniglot(root, 28, tmp_path / "cache", SYNTH_COUNTS)
    message = str(info.value)
    assert str(archive) in message and member in message and word in message
    assert "\n" not in message


def test_18_decompression_bomb_in_miniimagenet(layouts, tmp_path):  # noqa: F811
    root = _clone_csv_root(layouts, tmp_path)
    bomb = root / "images" / f"{CLASSES[3]}00000005.jpg"
    bomb.write_bytes(_png_header_only(9000, 9000))
    with pytest.raises(DataError) as info:
        load_miniimagenet(root, "val", cache_dir=tmp_path / "cache")
    assert str(bomb) in str(info.value) and "bomb" in str(info.value)
