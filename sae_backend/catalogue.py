"""The e2e SAE paper's GPT-2 SAEs as menu entries, read from `catalogue.yaml`.

The data (run ids, Hugging Face names, SAELens releases) lives in the YAML file; this module
only reads it, checks its shape and joins the tables, so that each entry carries every URI
under which the same SAE can be loaded:

    e = catalogue().select(criterion="ce", layer=6, sae_type="e2e")[0]
    e.wandb    # 'wandb:sparsify/gpt2/zgdpkafo'
    e.hf       # 'hf:apollo-research/e2e-saes-gpt2:e2e_similar_ce_layer_6.pt'
    e.saelens  # 'saelens:gpt2-small-res_sce-ajt/blocks.6.hook_resid_pre'

The SAELens part doubles as the built-in table that lets `saelens:` URIs of the Apollo
releases resolve without the `sae_lens` package (see `sources/saelens.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .errors import FormatError

CATALOGUE_PATH = Path(__file__).with_name("catalogue.yaml")


@dataclass(frozen=True)
class SaelensSAE:
    """One SAE of a SAELens release: where its files are on Hugging Face, its Neuronpedia id.

    path is a folder (or file) inside `repo_id`; neuronpedia_id is "modelId/sourceId" or None.
    sae_type/criterion/layer link it to the paper's tables (None for releases not from the paper);
    inferred marks a release name that follows the authors' pattern but was not read in their code.
    """

    release: str
    sae_id: str
    repo_id: str
    path: str
    neuronpedia_id: str | None = None
    sae_type: str | None = None
    criterion: str | None = None
    layer: int | None = None
    inferred: bool = False

    @property
    def uri(self) -> str:
        return f"saelens:{self.release}/{self.sae_id}"

    @property
    def hf_uri(self) -> str:
        return f"hf:{self.repo_id}:{self.path}"


@dataclass(frozen=True)
class Entry:
    """One cell of the paper's matched-run tables, with every URI that loads that SAE.

    hf (raw e2e_sae file), hf_saelens (SAELens-format folder), saelens and neuronpedia_id are
    None where no copy was published: the alive-count table has none of its own, so its cells
    borrow the copies of the same run from the CE-loss or L0 table when it sits there too.
    """

    layer: int
    sae_type: str
    criterion: str
    run_id: str
    wandb: str
    hf: str | None = None
    hf_saelens: str | None = None
    saelens: str | None = None
    neuronpedia_id: str | None = None
    saelens_inferred: bool = False
    label: str = ""

    def uris(self) -> dict[str, str]:
        """The URIs of this SAE by kind ("wandb", "hf", "hf_saelens", "saelens"), present ones only."""
        pairs = {
            "wandb": self.wandb,
            "hf": self.hf,
            "hf_saelens": self.hf_saelens,
            "saelens": self.saelens,
        }
        return {k: v for k, v in pairs.items() if v}


@dataclass(frozen=True)
class SeedPair:
    """The same training setting run with two seeds: a baseline for 'how different is different'."""

    layer: int
    sae_type: str
    run_ids: tuple[str, str]
    uris: tuple[str, str]


@dataclass(frozen=True)
class Catalogue:
    model: str
    layers: tuple[int, ...]
    sae_types: dict[str, str]  # key -> menu label
    criteria: dict[str, str]  # key -> menu label
    wandb_project: str
    entries: tuple[Entry, ...]
    seed_pairs: tuple[SeedPair, ...]
    also: tuple[tuple[str, str], ...]  # (wandb URI, note)
    saelens: dict[tuple[str, str], SaelensSAE]  # (release, sae_id) -> SAE

    def select(
        self, criterion: str | None = None, layer: int | None = None, sae_type: str | None = None
    ) -> list[Entry]:
        """Entries matching every given field, in table order (criterion, layer, SAE type)."""
        return [
            e
            for e in self.entries
            if (criterion is None or e.criterion == criterion)
            and (layer is None or e.layer == layer)
            and (sae_type is None or e.sae_type == sae_type)
        ]

    def find(self, uri: str) -> list[Entry]:
        """Entries that load the SAE named by `uri` (any of its URIs, or a bare W&B run id)."""
        return [e for e in self.entries if uri == e.run_id or uri in e.uris().values()]

    def wandb_uri(self, run_id: str) -> str:
        return f"wandb:{self.wandb_project}/{run_id}"


@cache
def catalogue() -> Catalogue:
    """The shipped catalogue (read once per process)."""
    return load_catalogue(CATALOGUE_PATH)


def load_catalogue(path: Path) -> Catalogue:
    """Read and check a catalogue file; a malformed one raises FormatError naming the problem."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise FormatError(f"{path}: cannot read the SAE catalogue ({_first_line(exc)})") from None
    try:
        return _build(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(
            f"{path}: malformed SAE catalogue ({type(exc).__name__}: {exc})"
        ) from None


def _build(data: dict[str, Any]) -> Catalogue:
    project = str(data["wandb_project"])
    sae_types = {str(k): str(v) for k, v in data["sae_types"].items()}
    criteria = {str(k): str(v) for k, v in data["criteria"].items()}
    layers = tuple(int(x) for x in data["layers"])
    hook = str(data["hook"])

    saelens = {}
    for release, rel in data["saelens_releases"].items():
        paper = rel.get("paper") or {}
        for sae in rel["saes"]:
            sid = str(sae["id"])
            layer = _layer_of(hook, sid, layers)
            saelens[(release, sid)] = SaelensSAE(
                release=release,
                sae_id=sid,
                repo_id=str(rel["repo_id"]),
                path=str(sae["path"]),
                neuronpedia_id=sae.get("neuronpedia"),
                sae_type=_known(paper.get("sae_type"), sae_types, "sae_type"),
                criterion=_known(paper.get("criterion"), criteria, "criterion"),
                layer=layer,
                inferred=bool(paper.get("inferred", False)),
            )
    by_cell = {
        (s.criterion, s.layer, s.sae_type): s for s in saelens.values() if s.criterion is not None
    }

    raw = data["hf_raw"]
    entries = []
    for criterion, table in data["runs"].items():
        _known(criterion, criteria, "criterion")
        for layer, row in table.items():
            if int(layer) not in layers:
                raise ValueError(f"layer {layer} is not in layers {list(layers)}")
            for sae_type, run_id in row.items():
                _known(sae_type, sae_types, "sae_type")
                s = by_cell.get((criterion, int(layer), sae_type))
                hf = None
                if criterion in raw["criteria"]:
                    name = raw["file"].format(sae_type=sae_type, criterion=criterion, layer=layer)
                    hf = f"hf:{raw['repo']}:{name}"
                entries.append(
                    Entry(
                        layer=int(layer),
                        sae_type=sae_type,
                        criterion=criterion,
                        run_id=str(run_id),
                        wandb=f"wandb:{project}/{run_id}",
                        hf=hf,
                        hf_saelens=s.hf_uri if s else None,
                        saelens=s.uri if s else None,
                        neuronpedia_id=s.neuronpedia_id if s else None,
                        saelens_inferred=s.inferred if s else False,
                        label=f"layer {layer} · {sae_types[sae_type]} · {criteria[criterion]}",
                    )
                )

    # A run that also sits in a table without published copies (e.g. the alive-count table)
    # is the same SAE: give it the copies of its first entry that has them.
    copies: dict[str, Entry] = {}
    for e in entries:
        if e.hf or e.saelens:
            copies.setdefault(e.run_id, e)
    for i, e in enumerate(entries):
        src = copies.get(e.run_id)
        if src is not None and not (e.hf or e.saelens):
            entries[i] = replace(
                e,
                hf=src.hf,
                hf_saelens=src.hf_saelens,
                saelens=src.saelens,
                neuronpedia_id=src.neuronpedia_id,
                saelens_inferred=src.saelens_inferred,
            )

    seed_pairs = []
    for p in data["seed_pairs"]:
        a, b = (str(r) for r in p["runs"])
        _known(p["sae_type"], sae_types, "sae_type")
        seed_pairs.append(
            SeedPair(
                layer=int(p["layer"]),
                sae_type=str(p["sae_type"]),
                run_ids=(a, b),
                uris=(f"wandb:{project}/{a}", f"wandb:{project}/{b}"),
            )
        )
    also = tuple((f"wandb:{project}/{x['run']}", str(x.get("note", ""))) for x in data["also"])
    return Catalogue(
        model=str(data["model"]),
        layers=layers,
        sae_types=sae_types,
        criteria=criteria,
        wandb_project=project,
        entries=tuple(entries),
        seed_pairs=tuple(seed_pairs),
        also=also,
        saelens=saelens,
    )


def _known(key: Any, table: dict[str, str], what: str) -> str | None:
    if key is None:
        return None
    if key not in table:
        raise ValueError(f"unknown {what} {key!r}; known: {', '.join(table)}")
    return str(key)


def _layer_of(hook_template: str, sae_id: str, layers: tuple[int, ...]) -> int | None:
    for layer in layers:
        if hook_template.format(layer=layer) == sae_id:
            return layer
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
