"""Hostile and broken files: every one must end as one FormatError line naming the file.

No code from a pickle may run (the marker file must not appear), and nothing reaches the user
as a traceback; genuine programming errors (TypeError) still surface in tests.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_backend import load
from sae_backend.errors import FormatError, SAEError
from tests.factories import (
    planted,
    unit_rows,
    write_dictionary_learning,
    write_e2e_folder,
    write_gemma_scope,
    write_matrix,
    write_saelens,
    write_sparsify,
)

POS = "blocks.6.hook_resid_pre"


def _fails(uri: str | Path, names: str | Path, *fragments: str, **kw) -> str:
    """Loading raises a one-line FormatError that names `names` and contains `fragments`."""
    with pytest.raises(FormatError) as e:
        load(str(uri), **kw)
    msg = str(e.value)
    assert isinstance(e.value, SAEError)
    assert "\n" not in msg and len(msg) < 600, msg
    assert str(names) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


# ----------------------------------------------------------------------------- malicious pickles


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_SystemPayload, _ExecPayload])
@pytest.mark.parametrize("name", ["ae.pt", "samples_10.pt", "weights.pt", "model.pth"])
@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "raw_pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(
    tmp_path: Path, payload, name, writer
) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / name
    obj = {"W_dec": payload(marker), "decoder.weight": torch.zeros(3, 2)}
    if writer == "torch_zip":
        torch.save(obj, path)
    elif writer == "torch_legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    assert not marker.exists()
    _fails(path, path, "refuses to run code from pickles", orientation="rows", key="W_dec")
    assert not marker.exists()


def test_malicious_pickle_inside_a_checkpoint_folder(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    p = planted()
    folder = write_e2e_folder(tmp_path / "run", {10: {POS: (p.decoder, p.encoder)}})
    torch.save({"x": _SystemPayload(marker)}, folder / "samples_99.pt")  # the one that gets picked
    _fails(folder, folder / "samples_99.pt", "refuses to run code from pickles", "posix.system")
    assert not marker.exists()


# ----------------------------------------------------------------------------- broken files


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_pt(tmp_path: Path) -> None:
    p = planted()
    ae = write_dictionary_learning(tmp_path / "t", p.decoder, p.encoder)
    _truncate(ae)
    _fails(ae, ae, "truncated or corrupted")


def test_truncated_safetensors(tmp_path: Path) -> None:
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    _truncate(folder / "sae_weights.safetensors", 0.7)
    _fails(folder, folder / "sae_weights.safetensors", "safetensors")


def test_truncated_npz(tmp_path: Path) -> None:
    p = planted()
    path = write_gemma_scope(tmp_path / "params.npz", p.decoder, p.encoder)
    _truncate(path)
    _fails(path, path, "truncated or corrupted .npz")


def test_truncated_npy_and_matrix_pt(tmp_path: Path) -> None:
    p = planted()
    npy = write_matrix(tmp_path / "m.npy", p.decoder)
    _truncate(npy, 0.6)
    _fails(npy, npy, "truncated or corrupted .npy", orientation="rows")
    pt = write_matrix(tmp_path / "m.pt", p.decoder)
    _truncate(pt, 0.6)
    _fails(pt, pt, "truncated or corrupted", orientation="rows")


@pytest.mark.parametrize(
    "name",
    ["ae.pt", "samples_3.pt", "decoder.pt", "sae_weights.safetensors", "params.npz", "m.npy"],
)
def test_text_file_with_a_weights_name(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("this is not a tensor file\nsecond line\n")
    _fails(path, path, orientation="rows")


def test_text_pt_says_it_is_not_a_pytorch_file(tmp_path: Path) -> None:
    path = tmp_path / "ae.pt"
    path.write_text("hello")
    _fails(path, path, "not a PyTorch file")


def test_pickled_object_array_in_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.npz"
    np.savez(path, W_dec=np.array([{"a": 1}], dtype=object), W_enc=np.zeros((2, 3)))
    _fails(path, path)


def test_broken_json_and_unsafe_yaml_configs(tmp_path: Path) -> None:
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    (folder / "cfg.json").write_text("{not json")
    _fails(folder, folder / "cfg.json", "not a readable JSON config")

    run = write_e2e_folder(tmp_path / "run", {10: {POS: (p.decoder, p.encoder)}})
    marker = tmp_path / "YAML_MARKER"
    (run / "final_config.yaml").write_text(
        f"x: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    _fails(run, run / "final_config.yaml", "not a readable YAML config")
    assert not marker.exists()


# ----------------------------------------------------------------------------- bad values


def test_nan_in_saelens_decoder(tmp_path: Path) -> None:
    p = planted()
    dec = p.decoder.copy()
    dec[2, 3] = np.nan
    folder = write_saelens(tmp_path / "sae", dec, p.encoder)
    _fails(folder, folder / "sae_weights.safetensors", "W_dec contains 1 NaN and 0 Inf values")


def test_inf_in_e2e_decoder(tmp_path: Path) -> None:
    p = planted()
    dec = p.decoder.copy()
    dec[0, 0], dec[4, 1] = np.inf, -np.inf
    folder = write_e2e_folder(tmp_path / "run", {10: {POS: (dec, p.encoder)}})
    _fails(
        folder,
        folder / "samples_10.pt",
        "blocks-6-hook_resid_pre.decoder.weight contains 0 NaN and 2 Inf",
    )


def test_nan_in_encoder_and_in_matrix(tmp_path: Path) -> None:
    p = planted()
    enc = p.encoder.copy()
    enc[1, 1] = np.nan
    folder = write_sparsify(tmp_path / "layers.1", p.decoder, enc)
    _fails(folder, folder / "sae.safetensors", "encoder.weight contains 1 NaN")
    dec = p.decoder.copy()
    dec[5] = np.nan
    path = write_matrix(tmp_path / "m.npz", {"W": dec})
    _fails(path, path, "W contains 6 NaN", orientation="rows")


def test_nan_in_saelens_sparsity(tmp_path: Path) -> None:
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder, density=np.full(10, 0.1))
    save_file({"sparsity": torch.full((10,), float("nan"))}, str(folder / "sparsity.safetensors"))
    _fails(folder, folder / "sparsity.safetensors", "sparsity contains 10 NaN")
    save_file({"sparsity": torch.zeros(9)}, str(folder / "sparsity.safetensors"))
    _fails(folder, folder / "sparsity.safetensors", "sparsity has shape [9], expected [10]")
    save_file({"log_sparsity": torch.zeros(10)}, str(folder / "sparsity.safetensors"))
    _fails(folder, folder / "sparsity.safetensors", "missing key(s) sparsity", "log_sparsity")


def test_wrong_ranks(tmp_path: Path) -> None:
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    t = load_file(str(folder / "sae_weights.safetensors"))
    t["W_dec"] = t["W_dec"].reshape(-1)
    save_file(t, str(folder / "sae_weights.safetensors"))
    _fails(
        folder, folder / "sae_weights.safetensors", "W_dec has shape [60], expected a 2-D matrix"
    )

    ae = write_dictionary_learning(tmp_path / "t", p.decoder, p.encoder)
    state = torch.load(ae, weights_only=True)
    state["decoder.weight"] = state["decoder.weight"].reshape(
        2, 3, 10
    )  # a crosscoder-like 3-D weight
    torch.save(state, ae)
    _fails(ae, ae, "decoder.weight has shape [2, 3, 10], expected a 2-D matrix")

    npy = write_matrix(tmp_path / "v.npy", np.ones(5))
    _fails(npy, npy, "has shape [5], expected a 2-D matrix", orientation="rows")


def test_missing_keys_name_expected_and_present(tmp_path: Path) -> None:
    p = planted()
    folder = write_sparsify(tmp_path / "layers.0", p.decoder, p.encoder)
    t = load_file(str(folder / "sae.safetensors"))
    del t["encoder.weight"]
    save_file(t, str(folder / "sae.safetensors"))
    _fails(
        folder,
        folder / "sae.safetensors",
        "missing key(s) encoder.weight",
        "keys present: W_dec, b_dec, encoder.bias",
    )

    sl = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    t = load_file(str(sl / "sae_weights.safetensors"))
    t["W_dec_renamed"] = t.pop("W_dec")
    save_file(t, str(sl / "sae_weights.safetensors"))
    _fails(sl, sl / "sae_weights.safetensors", "missing key(s) W_dec", "W_dec_renamed")

    ae = tmp_path / "ae.pt"
    torch.save({"encoder.weight": torch.zeros(10, 6), "bias": torch.zeros(6)}, ae)
    _fails(ae, ae, "expected key 'decoder.weight' or 'W_dec'", "keys present: bias, encoder.weight")

    e2e = tmp_path / "samples_5.pt"
    torch.save({"blocks-1-hook_resid_pre.encoder.0.weight": torch.zeros(10, 6)}, e2e)
    _fails(e2e, e2e, "no e2e_sae weights", "blocks-1-hook_resid_pre.encoder.0.weight")

    folder = tmp_path / "params_only"
    write_gemma_scope(folder / "params.npz", p.decoder, p.encoder)
    arrays = dict(np.load(folder / "params.npz"))
    del arrays["W_dec"]
    np.savez(folder / "params.npz", **arrays)
    _fails(folder, folder / "params.npz", "missing key W_dec", "W_enc")


def test_non_float_dtypes(tmp_path: Path) -> None:
    ae = tmp_path / "ae.pt"
    torch.save(
        {
            "decoder.weight": torch.ones(6, 10, dtype=torch.int64),
            "encoder.weight": torch.zeros(10, 6),
        },
        ae,
    )
    _fails(ae, ae, "decoder.weight has dtype int64, expected float")
    npy = write_matrix(tmp_path / "b.npy", np.ones((4, 3), dtype=bool))
    _fails(npy, npy, "has dtype bool, expected floating point", orientation="rows")


def test_not_a_state_dict(tmp_path: Path) -> None:
    ae = tmp_path / "ae.pt"
    torch.save([torch.zeros(3, 3)], ae)
    _fails(ae, ae, "expected a state dict", "found list")


def test_bf16_sparsify_loads_as_float32(tmp_path: Path) -> None:
    p = planted()
    folder = write_sparsify(tmp_path / "layers.9", p.decoder, p.encoder, dtype=torch.bfloat16)
    d = load(str(folder))
    assert d.decoder.dtype == np.float32 and d.meta.layer == 9
    ref = unit_rows(torch.tensor(p.encoder).bfloat16().double().numpy())[0]
    np.testing.assert_allclose(d.encoder, ref, atol=1e-6)
    # a bf16 plain matrix too
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.tensor(p.decoder).bfloat16()}, str(path))
    m = load(str(path), orientation="rows")
    np.testing.assert_allclose(
        m.decoder, unit_rows(torch.tensor(p.decoder).bfloat16().double().numpy())[0], atol=1e-6
    )


# ----------------------------------------------------------------------------- unexpected errors


def test_low_level_reader_errors_become_one_format_error(tmp_path: Path, monkeypatch) -> None:
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    from sae_backend.formats import saelens

    for exc in (
        KeyError("W_dec"),
        ValueError("bad\nvalue"),
        RuntimeError("boom"),
        OSError(5, "I/O error"),
        pickle.UnpicklingError("x"),
        EOFError(),
    ):

        def broken(path, opts, exc=exc):
            raise exc

        monkeypatch.setattr(saelens, "read", broken)
        msg = _fails(folder, folder, "not a readable SAE file", type(exc).__name__)
        assert "bad value" in msg or not isinstance(exc, ValueError)

    def buggy(path, opts):
        raise TypeError("a bug in our code")

    monkeypatch.setattr(saelens, "read", buggy)
    with pytest.raises(TypeError, match="a bug in our code"):
        load(str(folder))


def test_folder_that_is_no_sae(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    _fails(tmp_path / "empty", tmp_path / "empty", "not a recognised SAE file or folder")


def test_no_half_loaded_dictionary_after_a_failure(tmp_path: Path) -> None:
    """A failing load leaves the files untouched and a later good load still works."""
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    backup = tmp_path / "backup"
    shutil.copytree(folder, backup)
    (folder / "cfg.json").write_text("[]")
    _fails(folder, folder / "cfg.json", "expected a JSON object")
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)
    np.testing.assert_allclose(load(str(folder)).decoder, unit_rows(p.decoder)[0], atol=1e-6)
