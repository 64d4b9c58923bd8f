"""Read Friends transcripts (shared TSV, Emory NLP JSON seasons, or paired CSV) into one table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

UTTERANCE_COLUMNS = ["season", "episode", "scene", "utterance", "speaker", "text"]
PAIRED_CSV_COLUMNS = ["character", "q", "a"]
_EMORY_ID = re.compile(r"s(\d+)_e(\d+)_c(\d+)_u(\d+)")


class DataError(ValueError):
    """Input that cannot be read; its message names the file and what is wrong."""


def detect_format(path: Path) -> str:
    """'tsv', 'emory' or 'csv', from the path (a file, or a folder of one of them)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        if any(path.glob("*.json")):
            return "emory"
        if any(path.glob("*.tsv")):
            return "tsv"
        if any(path.glob("*.csv")):
            return "csv"
        raise DataError(f"{path}: folder holds no .tsv, .json or .csv transcripts")
    suffix = path.suffix.lower()
    formats = {".tsv": "tsv", ".json": "emory", ".csv": "csv"}
    if suffix not in formats:
        raise DataError(f"{path}: unknown transcript format {suffix!r} (expected .tsv, .json or .csv)")
    return formats[suffix]


def _files(path: Path, pattern: str) -> list[Path]:
    return sorted(path.glob(pattern)) if path.is_dir() else [path]


def read_tsv(path: Path) -> pd.DataFrame:
    frames = []
    for file in _files(path, "*.tsv"):
        try:
            frame = pd.read_csv(file, sep="\t", keep_default_na=False, dtype=str, on_bad_lines="skip")
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise DataError(f"{file}: not a readable TSV ({error})") from None
        missing = [column for column in UTTERANCE_COLUMNS if column not in frame.columns]
        if missing:
            raise DataError(f"{file}: missing column(s) {', '.join(missing)}")
        frames.append(frame[UTTERANCE_COLUMNS])
    return _typed(pd.concat(frames, ignore_index=True))


def read_emory(path: Path) -> pd.DataFrame:
    rows = []
    for file in _files(path, "*.json"):
        try:
            season = json.loads(file.read_text(encoding="utf-8"))
            for episode in season["episodes"]:
                for scene in episode["scenes"]:
                    for utterance in scene["utterances"]:
                        rows.append(_emory_row(utterance))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{file}: not valid JSON ({error})") from None
        except (KeyError, TypeError, AttributeError, DataError):
            raise DataError(
                f"{file}: not an Emory NLP season file (expected season → episodes → scenes → "
                "utterances with utterance_id, speakers and transcript)"
            ) from None
    return _typed(pd.DataFrame(rows, columns=UTTERANCE_COLUMNS))


def _emory_row(utterance: dict) -> list:
    match = _EMORY_ID.fullmatch(utterance["utterance_id"])
    if not match:
        raise DataError(utterance["utterance_id"])
    speakers = utterance["speakers"]
    # The tidy TSV names one speaker; lines said by several (or none) have an empty speaker.
    speaker = speakers[0] if len(speakers) == 1 else ""
    return [*map(int, match.groups()), speaker, utterance["transcript"] or ""]


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric ids; rows whose ids are not numbers are dropped and counted by the caller."""
    frame = frame.copy()
    for column in ["season", "episode", "scene", "utterance"]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["speaker"] = frame["speaker"].astype(str).str.strip()
    frame["text"] = frame["text"].astype(str)
    return frame


def read_paired_csv(path: Path) -> pd.DataFrame:
    """The original project's `character,q,a` rows."""
    frames = []
    for file in _files(path, "*.csv"):
        try:
            frame = pd.read_csv(file, keep_default_na=False, dtype=str)
        except pd.errors.EmptyDataError:
            raise DataError(f"{file}: empty CSV") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise DataError(f"{file}: not a readable CSV ({error})") from None
        missing = [column for column in PAIRED_CSV_COLUMNS if column not in frame.columns]
        if missing:
            raise DataError(f"{file}: missing column(s) {', '.join(missing)}")
        if frame.empty:
            raise DataError(f"{file}: empty CSV (a header and no rows)")
        frames.append(frame[PAIRED_CSV_COLUMNS])
    return pd.concat(frames, ignore_index=True)
