"""One panel for several blind rounds, and probes judged against the shipped blend before one.

Each blind round has its own judges, so a difference between rounds is partly a difference between
panels. `joint_pairs` shuffles several rounds' pairs into one file for one panel (the key keeps
which round each pair came from); a probe (`eval/blind/probes/*/make.py`) patches the shipped
policy, makes its pairs on the shipped round's cached generations (`probe_pairs`) and puts them
beside the shipped round's for one panel (`probe_cli`). `python -m train blind score` scores them.
"""
from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

from train.blind import make_pairs, round_pairs, write_pairs


def joint_pairs(rounds: dict[str, Path]) -> list[dict]:
    """The pairs of several blind rounds for one panel: each keeps its round's sides, and its key
    entry gains `system` (the round's name) and `pair` (its id in that round)."""
    return [{**pair, "key": {**pair["key"], "system": system, "pair": pair_id}}
            for system, folder in rounds.items() for pair_id, pair in round_pairs(folder)]


def probe_pairs(out: Path, shipped: Path = Path("eval/blind")) -> dict:
    """A probe's blind pairs in `out`: `make_pairs` of the shipped files (the policy as the caller
    patched it) on the shipped round's cached generations, so only the probe's change differs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "generations.json").write_bytes((shipped / "generations.json").read_bytes())
    try:
        return make_pairs(Path("build/chandler"), Path("models/chandler-selector"), Path("build/lines-without-test"), out)
    finally:
        (out / "generations.json").unlink()


def probe_cli(here: Path, system: str, seed: int, patch: Callable[[], None], **steps: Callable[[], None]) -> None:
    """The command line of a probe's `make.py` in `here` (a folder of `eval/blind/probes`): `probe`
    patches the shipped policy and writes the probe's pairs into `here/probe`; `joint` shuffles the
    shipped round's pairs and the probe's (named `system`) into one panel's file; `steps` add others."""
    shipped = here.parents[1]

    def probe() -> None:
        patch()
        print(probe_pairs(here / "probe", shipped))

    steps = {"probe": probe,
             "joint": lambda: write_pairs(here, joint_pairs({"shipped": shipped, system: here / "probe"}), random.Random(seed), "k"),
             **steps}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        print(f"usage: make.py {' | '.join(steps)}", file=sys.stderr)
        sys.exit(2)
    steps[sys.argv[1]]()
