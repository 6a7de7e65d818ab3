"""lca.torch.load_state_dict: weights from safetensors or torch.save files, never code.

A ``.pt`` file is a pickle, and unpickling runs whatever callable it names; the loader reads
only tensors and plain containers, and refuses anything else with one line before any of
it runs.
"""

from __future__ import annotations

import os
import pickle

import pytest

torch = pytest.importorskip("torch")

from helpers import assert_one_line_error  # noqa: E402

from lca.storage import RunError  # noqa: E402
from lca.torch import load_state_dict  # noqa: E402


def _state() -> dict:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3).state_dict()


def _assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want) or sorted(got) == sorted(want)
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def test_reads_safetensors_and_torch_save_files(tmp_path):
    from safetensors.torch import save_file

    state = _state()
    save_file(state, tmp_path / "w.safetensors")
    _assert_same(load_state_dict(tmp_path / "w.safetensors"), state)
    torch.save(state, tmp_path / "w.pt")
    _assert_same(load_state_dict(tmp_path / "w.pt"), state)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "lightning.ckpt")
    _assert_same(load_state_dict(tmp_path / "lightning.ckpt"), state)


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(RunError) as failure:
        load_state_dict(tmp_path / "missing.pt")
    assert_one_line_error(failure, "no such checkpoint file")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(RunError) as failure:
        load_state_dict(tmp_path / "junk.safetensors")
    assert_one_line_error(failure, "not a safetensors file")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(RunError) as failure:
        load_state_dict(tmp_path / "list.pt")
    assert_one_line_error(failure, "not a state dict")


class Planted:
    """What a malicious checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path, marker, form: str) -> None:
    if form == "torch.save":
        torch.save(Planted(marker), path)
    elif form == "state dict entry":
        torch.save({**_state(), "extra": Planted(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Planted(marker)))


@pytest.mark.parametrize("form", ["torch.save", "state dict entry", "bare pickle"])
def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path, form):
    # the planted file really runs its command when unpickled the ordinary way
    control = tmp_path / "control-ran"
    _plant(tmp_path / "control.pt", control, form)
    if form == "bare pickle":
        pickle.loads((tmp_path / "control.pt").read_bytes())
    else:
        torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()

    marker, path = tmp_path / "pwned", tmp_path / "model.pt"
    _plant(path, marker, form)
    with pytest.raises(RunError) as failure:
        load_state_dict(path)
    assert_one_line_error(failure, str(path), "refused to unpickle")
    assert not marker.exists()
