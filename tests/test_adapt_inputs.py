"""What ``mamlkit adapt`` accepts as support and query data, and how unreadable run files
are reported (issue 23, items 12, 13, 14, 18, 21, 23, 25)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlkit.cli import main
from mamlkit.data.images import decode_image

from .imagefolders import class_image
from .test_adapt import saved, write_synthetic_task
from .test_cli_bad_input import assert_user_error, run_cli


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity (what strict parsers do)."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# ---- 12: a head of fixed width needs its number of classes -------------------------------

FIXED_HEADS = ["omniglot_metasgd_5w1s", "omniglot_mamlpp_5w1s", "omniglot_anil_5w1s"]
FIXED_HEADS += ["omniglot_reptile_5w1s", "omniglot_maml_5w1s"]


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    """Untrained 5-way runs (weights do not matter for the checks) and support folders of
    3, 5 and 6 classes."""
    root = tmp_path_factory.mktemp("image_runs")
    runs = {p: saved(root, p, p, "model.filters=4") for p in FIXED_HEADS}
    runs["protonet"] = saved(root, "protonet", "omniglot_protonet_5w1s", "model.filters=4")
    supports = {}
    for classes in (3, 5, 6):
        supports[classes] = root / f"support{classes}"
        write_synthetic_task(supports[classes], range(classes), 1)
    query = root / "query.png"
    class_image(1, 99).save(query)
    return runs, supports, query


@pytest.mark.parametrize("preset", FIXED_HEADS)
@pytest.mark.parametrize("classes,steps", [(3, "0"), (3, "1"), (6, "1")])
def test_12_a_fixed_width_head_refuses_another_number_of_classes(
    capsys, tmp_path, image_runs, preset, classes, steps
):
    runs, supports, query = image_runs
    out = tmp_path / "preds.json"
    argv = ["adapt", runs[preset], "--support", supports[classes], "--query", query]
    assert_user_error(capsys, *argv, "--steps", steps, "--out", out, match="5-way")
    assert not out.exists()
    argv = ["adapt", runs[preset], "--support", supports[5], "--query", query, "--steps", "1"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err


def test_12_protonet_takes_any_number_of_classes(capsys, tmp_path, image_runs):
    runs, supports, query = image_runs
    out = tmp_path / "preds.json"
    code, _, err = run_cli(
        capsys, "adapt", runs["protonet"], "--support", supports[3], "--query", query, "--out", out
    )
    assert code == 0, err
    (prediction,) = strict_json(out.read_text())["predictions"]
    assert len(prediction["probabilities"]) == 3
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)


# ---- 13, 25: regression inputs -----------------------------------------------------------


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory):
    return saved(tmp_path_factory.mktemp("sine"), "sine", "sine_maml", "eval.steps=2")


def _adapt_csv(capsys, run, tmp_path, support_text, *queries, encoding="utf-8"):
    support = tmp_path / "support.csv"
    support.write_text(support_text, encoding=encoding)
    out = tmp_path / "preds.json"
    argv = ["adapt", run, "--support", support, "--query", *queries, "--out", out]
    return argv, out


SUPPORT = "x,y\n-2,-0.9\n0,0\n1.5,1\n"

BAD_REGRESSION = {  # support text, queries, what the message must name
    "query beyond float32": (SUPPORT, ["1e39"], "float32"),
    "support y beyond float32": ("x,y\n-2,-0.9\n0,1e39\n", ["0.5"], "line 3"),
    "support x beyond float32": ("x,y\n-2,-0.9\n-1e39,0\n", ["0.5"], "line 3"),
    "target column twice": ("x,y,y\n-2,-0.9,-0.9\n0,0,0\n", ["0.5"], "'y' appears 2 times"),
    "unknown column": ("x,y,z\n-2,-0.9,3\n0,0,3\n", ["0.5"], "'z'"),
    "unnamed column": ("x,y,\n-2,-0.9,\n0,0,\n", ["0.5"], "no name"),
    "two targets, one output": ("x,y1,y2\n-2,-0.9,1\n0,0,1\n", ["0.5"], "target column"),
    "overflow while adapting": ("x,y\n-2,1e30\n0,-1e30\n", ["0.5"], "not finite"),
}


@pytest.mark.parametrize("case", list(BAD_REGRESSION))
def test_13_bad_regression_input_is_one_line_and_writes_nothing(capsys, tmp_path, sine_run, case):
    text, queries, match = BAD_REGRESSION[case]
    argv, out = _adapt_csv(capsys, sine_run, tmp_path, text, *queries)
    assert_user_error(capsys, *argv, match=match)
    assert not out.exists()


def test_13_a_query_csv_beyond_float32_names_its_line(capsys, tmp_path, sine_run):
    (tmp_path / "q.csv").write_text("x\n0.5\n2e38\n4e38\n")
    argv, out = _adapt_csv(capsys, sine_run, tmp_path, SUPPORT, tmp_path / "q.csv")
    assert_user_error(capsys, *argv, match="q.csv line 4")
    assert not out.exists()


def test_13_25_valid_csvs_give_strict_json_and_a_bom_changes_nothing(capsys, tmp_path, sine_run):
    """A UTF-8 byte-order mark (Excel's "CSV UTF-8") reads as the same file; a query CSV
    may carry its (ignored) y column; the output is strict JSON."""
    (tmp_path / "q.csv").write_text("x,y\n0.25,9\n-1.5,9\n")
    results = []
    for encoding in ("utf-8", "utf-8-sig"):
        argv, out = _adapt_csv(
            capsys, sine_run, tmp_path, SUPPORT, "3e38", tmp_path / "q.csv", encoding=encoding
        )
        assert encoding == "utf-8" or (tmp_path / "support.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
        code, _, err = run_cli(capsys, *argv, "--force")
        assert code == 0, err
        results.append(strict_json(out.read_text())["predictions"])
    assert results[0] == results[1]
    assert [p["x"] for p in results[0]] == [pytest.approx(3e38, rel=1e-6), 0.25, -1.5]


# ---- 14: transparency ----------------------------------------------------------------------


def drawing(label: int, variant: int, size: int = 20) -> np.ndarray:
    """True where a synthetic drawing has its strokes (the bright square of class_image)."""
    return np.asarray(class_image(label, variant, size=size)) > 200


def save_drawing(strokes: np.ndarray, path: Path, mode: str) -> None:
    """Black strokes; the background white (``opaque``) or transparent in ``mode``."""
    if mode == "opaque":
        Image.fromarray(np.where(strokes, 0, 255).astype(np.uint8), "L").save(path)
    elif mode == "RGBA":  # transparent pixels black too, as many drawing programs save them
        pixels = np.zeros(strokes.shape + (4,), np.uint8)
        pixels[..., 3] = np.where(strokes, 255, 0)
        Image.fromarray(pixels, "RGBA").save(path)
    elif mode == "LA":
        pixels = np.zeros(strokes.shape + (2,), np.uint8)
        pixels[..., 1] = np.where(strokes, 255, 0)
        Image.fromarray(pixels, "LA").save(path)
    else:  # "P": a palette whose entry 1 is transparent
        image = Image.fromarray(np.where(strokes, 0, 1).astype(np.uint8), "P")
        image.putpalette([0, 0, 0, 0, 0, 0])
        image.save(path, transparency=1)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
@pytest.mark.parametrize("channels", [1, 3])
def test_14_transparent_pixels_are_the_white_paper(tmp_path, mode, channels):
    strokes = drawing(2, 0)
    save_drawing(strokes, tmp_path / "opaque.png", "opaque")
    save_drawing(strokes, tmp_path / "clear.png", mode)
    expected = decode_image(tmp_path / "opaque.png", 28, channels, invert=True)
    got = decode_image(tmp_path / "clear.png", 28, channels, invert=True)
    np.testing.assert_array_equal(got, expected)
    assert expected.max() == 255 and expected.min() == 0  # the strokes are there


def test_14_adapt_on_transparent_drawings_sees_the_strokes(capsys, tmp_path):
    """A pixel-space ProtoNet (model.target torch.nn:Flatten) on Omniglot's preprocessing:
    RGBA support and query drawings give the predictions of the same drawings on white."""
    run = saved(
        tmp_path,
        "pixels",
        "omniglot_protonet_5w1s",
        "model.target=torch.nn:Flatten",
        "task.image_size=20",
    )
    labels = [3, 7, 0, 12, 9]
    predictions = {}
    for mode in ("opaque", "RGBA"):
        for label in labels:
            (tmp_path / mode / "support" / f"c{label}").mkdir(parents=True)
            save_drawing(
                drawing(label, 0), tmp_path / mode / "support" / f"c{label}" / "a.png", mode
            )
            save_drawing(drawing(label, 7), tmp_path / mode / f"q{label}.png", mode)
        out = tmp_path / mode / "preds.json"
        queries = [tmp_path / mode / f"q{label}.png" for label in labels]
        code, _, err = run_cli(
            capsys,
            "adapt",
            run,
            "--support",
            tmp_path / mode / "support",
            "--query",
            *queries,
            "--out",
            out,
            "--trust-code",
        )
        assert code == 0, err
        predictions[mode] = [
            (p["class"], p["probabilities"]) for p in strict_json(out.read_text())["predictions"]
        ]
    assert [c for c, _ in predictions["opaque"]] == [f"c{label}" for label in labels]
    assert predictions["RGBA"] == predictions["opaque"]


# ---- 21: FIFOs and huge images ---------------------------------------------------------------


@contextlib.contextmanager
def fifo_with_a_writer(path: Path):
    """``path`` made a FIFO whose writer closes as soon as anyone opens it for reading: a
    reader sees an empty file (instead of blocking forever), so code that reads it fails
    the test's match rather than hanging; code that refuses it never opens it."""
    os.mkfifo(path)
    writer = threading.Thread(target=lambda: os.close(os.open(path, os.O_WRONLY)), daemon=True)
    writer.start()
    try:
        yield
    finally:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open return
        writer.join()
        os.close(reader)


def test_21_a_fifo_in_the_support_folder_is_refused_unread(capsys, tmp_path, image_runs):
    runs, supports, query = image_runs
    support = tmp_path / "support"
    write_synthetic_task(support, range(5), 1)
    fifo = support / "shape_2" / "1.png"
    with fifo_with_a_writer(fifo):
        argv = ["adapt", runs["omniglot_maml_5w1s"], "--support", support, "--query", query]
        assert_user_error(capsys, *argv, match="1.png is not a regular file")
        for queries in (fifo, fifo.parent):  # as a query, alone or in a folder of queries
            assert_user_error(
                capsys,
                "adapt",
                argv[1],
                "--support",
                supports[5],
                "--query",
                queries,
                match="not a regular file",
            )


def claimed_size_png(path: Path, width: int, height: int) -> None:
    """A small PNG whose header claims ``width`` x ``height``: its size is known from the
    header alone, so nothing this large is ever allocated."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("side", [12000, 20000])
def test_21_an_image_above_the_pixel_limit_is_refused_in_one_line(
    capsys, tmp_path, image_runs, side
):
    from mamlkit.data.images import MAX_IMAGE_PIXELS

    runs, supports, query = image_runs
    assert side * side > MAX_IMAGE_PIXELS
    huge = tmp_path / "huge.png"
    claimed_size_png(huge, side, side)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = assert_user_error(
            capsys,
            "adapt",
            runs["omniglot_maml_5w1s"],
            "--support",
            supports[5],
            "--query",
            huge,
            match="huge.png has",
        )
    assert "8192 x 8192" in line
    assert not [w for w in caught if "DecompressionBomb" in w.category.__name__]


# ---- 18: a full disk when the TensorBoard writer starts --------------------------------------


def test_18_tensorboard_failing_at_start_is_one_line_and_the_run_says_crashed(
    capsys, tmp_path, monkeypatch
):
    """The disk is full from the TensorBoard writer's first write on: its thread fails
    (a traceback of its own, printed by threading's default hook, before the fix), and
    status.json cannot be replaced by a new file any more (a real full disk)."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    import mamlkit.run_files

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # not pytest's
    full = {"now": False}

    def write_fails(self, data):
        full["now"] = True
        raise OSError(errno.ENOSPC, "No space left on device")

    atomic_write_text = mamlkit.run_files.atomic_write_text

    def no_new_files(path, text):
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        atomic_write_text(path, text)

    monkeypatch.setattr(RecordWriter, "write", write_fails)
    monkeypatch.setattr(mamlkit.run_files, "atomic_write_text", no_new_files)
    run = tmp_path / "run"
    argv = ["train", "sine_maml", "--out", run, "--no-progress"]
    for s in ("train.iterations=2", "train.val_every=0", "train.tensorboard=true"):
        argv += ["--set", s]
    line = assert_user_error(capsys, *argv, match="tensorboard")
    assert "--resume" in line and "No space left" in line
    assert strict_json((run / "status.json").read_text())["status"] == "crashed"

    monkeypatch.undo()  # space again
    code, _, err = run_cli(capsys, "train", "--resume", run, "--no-progress")
    assert code == 0, err
    assert strict_json((run / "status.json").read_text())["status"] == "finished"
    assert list((run / "tensorboard").iterdir())


# ---- 23: unreadable run files say "permission denied" ----------------------------------------


@pytest.fixture(scope="module")
def trained_sine(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    argv = ["train", "sine_maml", "--out", run, "--no-progress"]
    for s in ("train.iterations=2", "train.val_every=0", "train.tensorboard=false"):
        argv += ["--set", s]
    assert main([str(a) for a in argv]) == 0
    return run


@contextlib.contextmanager
def unreadable(monkeypatch, path: Path):
    """``chmod 000 path`` as an unprivileged user would see it. Root (as in CI) reads any
    file, so opening it is also made to fail as it does for a user: Python's open with
    PermissionError, safetensors' with "No such file or directory" (what it reports)."""
    import mamlkit.checkpoint

    target = os.path.realpath(path)

    def denied(file) -> bool:
        return isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == target

    def guard(real, error):
        def opener(file, *args, **kwargs):
            if denied(file):
                raise error()
            return real(file, *args, **kwargs)

        return opener

    def permission():
        return PermissionError(errno.EACCES, "Permission denied", str(path))

    def safetensors_error():
        return FileNotFoundError(f"No such file or directory: {path}")

    mode = path.stat().st_mode
    path.chmod(0)
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", guard(builtins.open, permission))
        patch.setattr(io, "open", guard(io.open, permission))
        patch.setattr(os, "open", guard(os.open, permission))
        patch.setattr(
            mamlkit.checkpoint, "safe_open", guard(mamlkit.checkpoint.safe_open, safetensors_error)
        )
        try:
            yield
        finally:
            path.chmod(mode)


def files(run: Path) -> dict[Path, bytes]:
    """The run's files and their bytes (the lock file records who held it last)."""
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".mamlkit.lock"}


@pytest.mark.parametrize("command", ["eval", "adapt"])
def test_23_an_unreadable_model_file_says_permission_denied(
    capsys, tmp_path, monkeypatch, trained_sine, command
):
    (tmp_path / "s.csv").write_text(SUPPORT)
    argv = ["eval", trained_sine, "--tasks", "2"]
    if command == "adapt":
        argv = ["adapt", trained_sine, "--support", tmp_path / "s.csv", "--query", "0.5"]
    with unreadable(monkeypatch, trained_sine / "model.safetensors"):
        line = assert_user_error(capsys, *argv, match="model.safetensors cannot be read")
    assert "permission denied" in line and "damaged" not in line and "chmod" in line


def test_23_an_unreadable_checkpoint_says_permission_denied_on_resume(
    capsys, tmp_path, monkeypatch, trained_sine
):
    (checkpoint,) = sorted((trained_sine / "checkpoints").glob("step-*.safetensors"))
    argv = ["train", "--resume", trained_sine, "--no-progress", "--set", "train.iterations=3"]
    before = files(trained_sine)
    with unreadable(monkeypatch, checkpoint):
        line = assert_user_error(capsys, *argv, match="permission denied")
    assert "damaged" not in line
    assert files(trained_sine) == before


def test_23_runs_lists_an_unreadable_status_as_unreadable(capsys, monkeypatch, trained_sine):
    with unreadable(monkeypatch, trained_sine / "status.json"):
        code, out, err = run_cli(capsys, "runs", trained_sine.parent)
    assert code == 0, err
    (row,) = out.splitlines()[1:]  # under the header row
    assert row.split()[1] == "unreadable", row


def test_21_runs_lists_a_fifo_status_as_unreadable_without_reading_it(
    capsys, tmp_path, trained_sine
):
    run = tmp_path / "runs" / "copy"
    run.mkdir(parents=True)
    for name in ("config.yaml", "env.json", "metrics.jsonl"):
        (run / name).write_bytes((trained_sine / name).read_bytes())
    with fifo_with_a_writer(run / "status.json"):
        code, out, err = run_cli(capsys, "runs", tmp_path / "runs")
    assert code == 0, err
    (row,) = out.splitlines()[1:]  # under the header row
    assert row.split()[1] == "unreadable", row
