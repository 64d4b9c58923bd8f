"""`python -m data negatives`: the style classifier's negative class, split like the pairs.

Two sources: the lines of the other five friends (each line that answers someone, the same
selection as the Chandler pairs, with its context) and movie dialogue from raw subtitle text.
Friends episodes go to the split their Chandler pairs went to (same seed, same episodes), so a
held-out episode is held out for both classes; movies are split by film.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from data.pairs import SPLIT_FRACTIONS, Skipped, clean_text, first_name, is_character, make_pairs, split_episodes, spoken_lines
from data.transcripts import DataError, detect_format, read_emory, read_tsv

MAIN_CHARACTERS = ("Chandler Bing", "Monica Geller", "Rachel Green", "Ross Geller", "Joey Tribbiani", "Phoebe Buffay")

_HTML_TAG = re.compile(r"<[^>]*>")
# `MAN:`, `DR. SMITH:`, `NlCKY:` (subtitle OCR reads I as l): capitalised words before a colon.
_SPEAKER_TAG = re.compile(r"(?<![\w'])(?:[A-Z][A-Zl'.-]*\s)*[A-Z][A-Zl'.-]*[A-Z]:(?=\s|$)")
# Sentence ends: after . ! ? (with or without a space: subtitles run together), not after a title.
_SENTENCE_END = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bJr\.)(?<=[.!?])\s*(?=[\"']?[A-Z])")
# Two subtitles glued without punctuation: `roll meI am`, `load of--Somebody`.
_GLUED = re.compile(r"(?<=[a-z])(?=[A-Z][a-z']|I\b)|(?<=--)(?=[A-Z])")
_DIALOGUE_DASH = re.compile(r"(?:(?<=[.!?\s])|^)(?:-\s*)+(?=[\"']?[A-Z])")  # `- Hi.- Hello.`: a new speaker
_NO_SPACE_AFTER = re.compile(r"(?<=[a-z][,;:])(?=[A-Za-z])|(?<=\.\.\.)(?=[a-z])")  # `Gump,as` `so...and`
_SHORT_CAPITALISED = re.compile(r"[A-Z][a-z]{0,2}")  # Mc|Donald, Mac|Gregor, De|Niro: not a break
_OCR_I = re.compile(r"\bl(?=\b|'(?:m|ll|ve|d)\b|t\b|f\b|s\b|n\b)")  # `l don't`, `l'm`, `lt was` → I
_LEADING_DASH = re.compile(r"^[-\s]+")
_DOT_RUN = re.compile(r"\.{4,}")
_MUSIC = re.compile("♪|\u00e2\u0099\u00aa|\u00e2\u2122\u00aa")  # ♪, or its UTF-8 bytes read as Latin-1/cp1252
_GARBLED = re.compile("[\u00c3\u00e2\u00c2]")  # what is left of other mis-decoded characters
_ENGLISH = frozenset("the you i to and it is that what of in me this don't i'm".split())  # not `a`, `no`: Spanish too
_BREAK = "\x00"  # survives clean_text (not whitespace), never in the text
_CREDITS = re.compile(r"@|www\.|\.com\b|subtitle|caption|synced|ripped|\b\d{3,4}p\b", re.IGNORECASE)


def movie_sentences(raw: str, skipped: Skipped | None = None) -> list[str]:
    """Raw subtitle text → cleaned sentences, in order."""
    skipped = skipped if skipped is not None else Skipped()
    text = _MUSIC.sub(_BREAK, _HTML_TAG.sub(" ", raw))
    # clean_text drops [SOUND NOTES] and (LAUGHS), normalises quotes and joins subtitle lines.
    text = _OCR_I.sub("I", _DOT_RUN.sub("...", clean_text(text, max_chars=len(text) + 1)))
    text = _split_glued(_DIALOGUE_DASH.sub(_BREAK, _SPEAKER_TAG.sub(_BREAK, text)))
    sentences = []
    for block in _NO_SPACE_AFTER.sub(" ", text).split(_BREAK):
        for sentence in _SENTENCE_END.split(block):
            sentence = _LEADING_DASH.sub("", sentence).strip()
            if not re.search(r"[A-Za-z]", sentence):
                continue
            if _CREDITS.search(sentence) or _GARBLED.search(sentence):
                skipped.add("movie: subtitle credits or garbled text")
                continue
            sentences.append(clean_text(sentence))
    return sentences


def is_english(sentences: list[str]) -> bool:
    """At least one word in ten among the commonest English words (Spanish subtitles: about 1%)."""
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", " ".join(sentences).lower())
    return sum(word in _ENGLISH for word in words) >= 0.1 * len(words) > 0


def _split_glued(text: str) -> str:
    """Put a break where two subtitles were glued together without a space."""
    out, start = [], 0
    for match in _GLUED.finditer(text):
        words = text[start : match.start()].split()
        if words and _SHORT_CAPITALISED.fullmatch(words[-1].lstrip("\"'-")):
            continue
        out.append(text[start : match.start()])
        start = match.start()
    out.append(text[start:])
    return _BREAK.join(out)


def friends_lines(transcripts: Path, character: str, context_turns: int, seed: int, skipped: Skipped) -> dict[str, list[dict]]:
    """The other five friends' lines, in the splits the pairs for `character` use."""
    form = detect_format(transcripts)
    if form == "csv":
        raise DataError(f"{transcripts}: negatives need scene-level transcripts (the TSV or Emory JSON), not paired CSV")
    utterances = read_tsv(transcripts) if form == "tsv" else read_emory(transcripts)
    lines = spoken_lines(utterances, skipped)
    # The same call on the same episodes as `python -m data build` makes, hence the same split.
    assignment = split_episodes(((p.season, p.episode) for p in make_pairs(lines, character, 1)), seed)
    if not assignment:
        raise DataError(f"{transcripts}: no lines of {character!r}, so no episode split to follow")
    others = [name for name in MAIN_CHARACTERS if not is_character(name, character)]
    # Episodes without a pair of `character` hold no positives: any seeded split of them is safe.
    rest = sorted({key for key in zip(lines["season"], lines["episode"]) if key not in assignment})
    assignment.update(split_episodes(rest, seed))
    splits: dict[str, list[dict]] = {name: [] for name in SPLIT_FRACTIONS}
    for name in tqdm(others, desc="friends' lines", unit="character"):
        for pair in make_pairs(lines, name, context_turns):
            splits[assignment[(pair.season, pair.episode)]].append(
                {"text": pair.reply, "source": "friends", "speaker": first_name(name), "season": pair.season,
                 "episode": pair.episode, "scene": pair.scene, "context": pair.context}
            )
    return splits


def movie_files(movies: Path) -> list[Path]:
    if not movies.is_dir():
        raise DataError(f"{movies}: no such folder of movie .txt files")
    files = sorted(movies.glob("*.txt"))
    if not files:
        raise DataError(f"{movies}: no .txt files")
    return files


def movie_lines(files: list[Path], context_turns: int, seed: int, skipped: Skipped) -> dict[str, list[dict]]:
    """Sentences of each film, with the sentences before them as context; whole films per split."""
    assignment = split_episodes([file.stem for file in files], seed)
    splits: dict[str, list[dict]] = {name: [] for name in SPLIT_FRACTIONS}
    for file in tqdm(files, desc="movies", unit="film"):
        try:
            sentences = movie_sentences(file.read_text(encoding="utf-8", errors="replace"), skipped)
        except OSError as error:
            raise DataError(f"{file}: cannot read ({error.strerror})") from None
        if not sentences or not is_english(sentences):
            skipped.add("movie: file not in English" if sentences else "movie: no dialogue in file")
            continue
        for index, sentence in enumerate(sentences):
            context = [{"speaker": "", "text": text} for text in sentences[max(0, index - context_turns) : index]]
            splits[assignment[file.stem]].append({"text": sentence, "source": "movie", "movie": file.stem, "context": context})
    return splits


def build_negatives(transcripts: Path, movies: Path, out: Path, character: str = "Chandler Bing",
                    context_turns: int = 4, seed: int = 0) -> dict:
    skipped = Skipped()
    files = movie_files(movies)  # checked first: the friends' lines take a while
    friends = friends_lines(transcripts, character, context_turns, seed, skipped)
    films = movie_lines(files, context_turns, seed, skipped)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_FRACTIONS:
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in friends[name] + films[name])
    stats = {
        "character": character,
        "context_turns": context_turns,
        "seed": seed,
        "lines": {name: {"friends": len(friends[name]), "movie": len(films[name])} for name in SPLIT_FRACTIONS},
        "episodes": {name: len({(r["season"], r["episode"]) for r in friends[name]}) for name in SPLIT_FRACTIONS},
        "movies": {name: sorted({r["movie"] for r in films[name]}) for name in SPLIT_FRACTIONS},
        "speakers": dict(Counter(r["speaker"] for rows in friends.values() for r in rows)),
        "skipped": dict(skipped.counts),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
