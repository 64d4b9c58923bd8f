"""`python -m train {sft,evaluate}`: see README."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serve.character.selector import SelectorError
from serve.character.style import DEFAULT_STYLE_MODEL, StyleModelError
from serve.engine.loading import EMBEDDED, ModelLoadError
from serve.settings import SettingsError
from train.examples import TrainDataError

WITHOUT_TEST = "an index without the test episodes (`python -m train lines --splits train validation`)"


def add_line_sources(parser: argparse.ArgumentParser, lines: str, lines_help: str) -> None:
    """The dataset, the selector and a line index, for the commands that retrieve his lines."""
    parser.add_argument("--data", type=Path, default=Path("build/chandler"), help="folder written by `python -m data build`")
    parser.add_argument("--selector", type=Path, default=Path("models/chandler-selector"))
    parser.add_argument("--lines", type=Path, default=Path(lines), help=lines_help)


def add_prompts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=Path, default=Path("data/line_prompts.jsonl"),
                        help="readers' prompts of the lines ({\"line\", \"prompt\"} per line)")


def add_draw(parser: argparse.ArgumentParser, step: str) -> None:
    """Which blind conversations (`train.blind.blind_conversations`)."""
    parser.add_argument("--draw", type=int, default=0,
                        help=f"{step}: which hundred held-out test conversations (0: the shipped round's; no two draws share one)")
    parser.add_argument("--everyday", type=Path,
                        help=f"{step}: everyday messages, one per line (default: the shipped round's 30)")


def everyday_messages(args: argparse.Namespace) -> list[str]:
    from train.blind import EVERYDAY, read_everyday

    return read_everyday(args.everyday) if args.everyday else EVERYDAY


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description="Fine-tune and evaluate the Chandler adapter.")
    commands = parser.add_subparsers(dest="command", required=True)
    sft = commands.add_parser("sft", help="QLoRA fine-tuning on a built dataset")
    sft.add_argument("--data", type=Path, required=True, help="folder written by `python -m data build`")
    sft.add_argument("--base-model", default=EMBEDDED, help="'embedded' (SmolLM2-135M), a Hugging Face id or a folder")
    sft.add_argument("--out", type=Path, required=True)
    sft.add_argument("--max-steps", type=int, default=-1)
    sft.add_argument("--epochs", type=float, default=1.0)
    sft.add_argument("--limit", type=int, help="use only the first N pairs of each split")
    sft.add_argument("--eval-limit", type=int, help="validation pairs used at each evaluation")
    sft.add_argument("--eval-steps", type=int, default=50)
    sft.add_argument("--save-steps", type=int, default=100)
    sft.add_argument("--learning-rate", type=float, default=2e-4)
    sft.add_argument("--lora-r", type=int, default=16)
    sft.add_argument("--no-4bit", dest="use_4bit", action="store_false", help="fp32 LoRA instead of a 4-bit base")
    sft.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT/checkpoints")
    sft.add_argument("--overwrite", action="store_true", help="replace an adapter already in OUT")
    sft.add_argument("--seed", type=int, default=0)
    evaluate = commands.add_parser("evaluate", help="test loss of base vs base + adapter, sample replies, report.md")
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--adapter", type=Path, required=True)
    evaluate.add_argument("--base-model", default=EMBEDDED)
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.add_argument("--limit", type=int, help="use only the first N test pairs for the loss")
    evaluate.add_argument("--samples", type=int, default=8, help="held-out contexts to sample replies for")
    evaluate.add_argument("--max-new-tokens", type=int, default=40)
    evaluate.add_argument("--style-model", type=Path, default=DEFAULT_STYLE_MODEL,
                          help="style classifier folder (`python -m train style`) for P(Chandler)")
    style = commands.add_parser("style", help="Chandler style classifier: bi-encoder vs cross-encoder, the better saved")
    style.add_argument("--data", type=Path, required=True, help="folder written by `python -m data build`")
    style.add_argument("--negatives", type=Path, required=True, help="folder written by `python -m data negatives`")
    style.add_argument("--out", type=Path, default=Path("models/chandler-style"))
    style.add_argument("--negatives-per-source", type=int, default=5000, help="training lines of friends and of movies")
    style.add_argument("--cross-train", type=int, default=6000, help="lines to fine-tune the cross-encoder on (CPU: keep small)")
    style.add_argument("--cross-max-length", type=int, default=48)
    style.add_argument("--no-cross", dest="cross", action="store_false", help="bi-encoder only")
    style.add_argument("--cache", help="folder to keep sentence embeddings in between runs")
    style.add_argument("--seed", type=int, default=0)
    selector = commands.add_parser("selector", help="response selector: MiniLM fine-tuned on (conversation, reply) pairs")
    selector.add_argument("--data", type=Path, required=True, help="folder written by `python -m data build`")
    selector.add_argument("--out", type=Path, default=Path("models/chandler-selector"))
    selector.add_argument("--epochs", type=float, default=2.0)
    selector.add_argument("--batch-size", type=int, default=64)
    selector.add_argument("--max-seq-length", type=int, default=96)
    selector.add_argument("--learning-rate", type=float, default=5e-5)
    selector.add_argument("--init", type=Path, help="a selector to continue from (default: the untuned encoder)")
    selector.add_argument("--hard-negatives", type=int, default=0, help="near misses per pair, mined with the starting model")
    selector.add_argument("--lm-pairs", type=int, default=50, help="test pairs for the adapter LM baselines (0: skip, ~30 min)")
    selector.add_argument("--others", type=Path, help="also train on the other friends' answers: a `python -m data negatives` folder")
    selector.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT/checkpoints")
    selector.add_argument("--seed", type=int, default=0)
    lines = commands.add_parser("lines", help="index Chandler's lines with the selector (models/chandler-lines)")
    lines.add_argument("--data", type=Path, required=True, help="folder written by `python -m data build`")
    lines.add_argument("--selector", type=Path, default=Path("models/chandler-selector"))
    lines.add_argument("--out", type=Path, default=Path("models/chandler-lines"))
    lines.add_argument("--splits", nargs="+", default=["train", "validation", "test"], help="splits whose lines are indexed")
    add_prompts(lines)
    prompts = commands.add_parser("prompts", help="fit the weight of the lines' prompts in the selector's score, report it")
    prompts.add_argument("--data", type=Path, default=Path("build/chandler"), help="folder written by `python -m data build`")
    prompts.add_argument("--selector", type=Path, default=Path("models/chandler-selector"))
    add_prompts(prompts)
    rerank = commands.add_parser("rerank", help="fit the LM rerank of the selector's top lines (weight, threshold), report it")
    rerank.add_argument("--data", type=Path, default=Path("build/chandler"), help="folder written by `python -m data build`")
    rerank.add_argument("--selector", type=Path, default=Path("models/chandler-selector"))
    rerank.add_argument("--validation-pairs", type=int, default=300, help="validation conversations to fit on (the LM is slow)")
    blind = commands.add_parser("blind", help="blind comparison: `make` the pairs for judges, `score` their judgments")
    blind.add_argument("step", choices=["make", "make-examples", "score"])
    add_line_sources(blind, "build/lines-without-test", WITHOUT_TEST)
    blind.add_argument("--out", type=Path, default=Path("eval/blind"))
    blind.add_argument("--plain", type=Path, default=Path("eval/blind/generations.json"),
                       help="make-examples: the plain generations that `make` cached")
    add_draw(blind, "make")
    ceiling = commands.add_parser("ceiling", help="readers pick among his top lines (`items`), their picks against the blind rivals (`pairs`)")
    ceiling.add_argument("step", choices=["items", "pairs"])
    add_line_sources(ceiling, "build/lines-without-test", WITHOUT_TEST)
    ceiling.add_argument("--depth", type=int, default=20, help="items: the selector's top lines shown per conversation")
    add_draw(ceiling, "items")
    ceiling.add_argument("--readers", type=Path, nargs="+", default=[Path("eval/ceiling/top20")],
                         help="items: the folder to write; pairs: the folders with readers' labels.jsonl")
    ceiling.add_argument("--blind", type=Path, default=Path("eval/blind"), help="pairs: the blind round whose rivals to use")
    ceiling.add_argument("--out", type=Path, default=Path("eval/ceiling"), help="pairs: where pairs.jsonl and key.json go")
    preferences = commands.add_parser("preferences", help="readers' picks among the policy's top lines: `make` items, `fit` the order, "
                                      "check a `picker` model against them")
    preferences.add_argument("step", choices=["make", "fit", "picker"])
    add_line_sources(preferences, "build/lines-train",
                     "make: an index without the validation episodes (`python -m train lines --splits train`)")
    preferences.add_argument("--conversations", type=int, default=300, help="make: validation conversations to label")
    preferences.add_argument("--out", type=Path, default=Path("eval/preferences/round3"), help="make: the round's folder")
    preferences.add_argument("--rounds", type=Path, nargs="+", default=sorted(Path("eval/preferences").glob("round*")),
                             help="fit, picker: labelled rounds (folders with key.json and labels.jsonl)")
    export = commands.add_parser("export", help="the merged model (base + adapter) as a GGUF file for llama.cpp / Ollama")
    export.add_argument("--gguf", type=Path, required=True, help="the .gguf file to write")
    export.add_argument("--adapter", default="default", help="LoRA adapter folder, 'default' (the shipped one) or 'none'")
    export.add_argument("--type", dest="weight_type", default="f16", choices=("f16", "q8_0"), help="weight type (default: %(default)s)")
    return parser.parse_args(argv)


def run_sft(args: argparse.Namespace) -> None:
    from train.sft import SFTConfig, train

    config = SFTConfig(
        data=str(args.data),
        out=str(args.out),
        base_model=args.base_model,
        use_4bit=args.use_4bit,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        eval_steps=args.eval_steps,
        eval_limit=args.eval_limit,
        save_steps=args.save_steps,
        limit=args.limit,
        seed=args.seed,
    )
    print(train(config, resume=args.resume, overwrite=args.overwrite))


def run_evaluate(args: argparse.Namespace) -> None:
    from train.card import update_metrics, write_card
    from train.evaluate import evaluate

    metrics = evaluate(args.data, args.adapter, args.base_model, args.out, args.limit, args.samples,
                       args.max_new_tokens, args.style_model)
    if (args.adapter / "metrics.json").exists():  # an adapter trained here: its card shows the test figures
        update_metrics(args.adapter, {"test": metrics})
        write_card(args.adapter)
    print(metrics)


def run_style(args: argparse.Namespace) -> None:
    from train.style import StyleConfig, train_style

    options = ("negatives_per_source", "cross_train", "cross_max_length", "cross", "cache", "seed")
    config = StyleConfig(data=str(args.data), negatives=str(args.negatives), out=str(args.out),
                         **{name: getattr(args, name) for name in options})
    print(train_style(config))


def run_selector(args: argparse.Namespace) -> None:
    from train.selector import SelectorConfig, train_selector

    config = SelectorConfig(data=str(args.data), out=str(args.out), epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, max_seq_length=args.max_seq_length,
                            others=str(args.others) if args.others else None, init=str(args.init) if args.init else None,
                            hard_negatives=args.hard_negatives, lm_pairs=args.lm_pairs, seed=args.seed)
    print(train_selector(config, resume=args.resume))


def run_lines(args: argparse.Namespace) -> None:
    from train.lines import build_lines

    print(build_lines(args.data, args.selector, args.out, tuple(args.splits), args.prompts))


def run_prompts(args: argparse.Namespace) -> None:
    from train.prompts import fit_prompts

    print(fit_prompts(args.data, args.selector, args.prompts))


def run_rerank(args: argparse.Namespace) -> None:
    from train.rerank import fit_rerank

    print(fit_rerank(args.data, args.selector, args.validation_pairs))


def run_blind(args: argparse.Namespace) -> None:
    from train.blind import make_example_pairs, make_pairs, score

    if args.step == "make":
        from serve.character.picker import configured_picker
        from serve.settings import load

        picker = configured_picker(load())  # blend as configured: with the LLM picker where CHANDLER_PICKER_URL names one
        print(make_pairs(args.data, args.selector, args.lines, args.out, draw=args.draw, everyday=everyday_messages(args), picker=picker))
    elif args.step == "make-examples":
        print(make_example_pairs(args.data, args.selector, args.lines, args.out, args.plain))
    else:
        print(score(args.out))


def run_ceiling(args: argparse.Namespace) -> None:
    from train.ceiling import make_items, make_pairs

    if args.step == "items":
        print(make_items(args.data, args.selector, args.lines, args.readers[0], args.depth,
                         draw=args.draw, everyday=everyday_messages(args)))
    else:
        print(make_pairs(args.readers, args.blind, args.out))


def run_preferences(args: argparse.Namespace) -> None:
    from train.preferences import fit_preference, make_items, picker_agreement

    if args.step == "make":
        print(make_items(args.data, args.selector, args.lines, args.out, args.conversations))
    elif args.step == "fit":
        print(fit_preference(args.rounds, args.selector))
    else:
        from serve.character.picker import configured_picker
        from serve.settings import load

        picker = configured_picker(load())
        if picker is None:
            raise SettingsError("preferences picker: no picker to check; set CHANDLER_PICKER_URL and CHANDLER_PICKER_MODEL")
        print(picker_agreement(args.rounds, picker))


def run_export(args: argparse.Namespace) -> None:
    from train.export import export_gguf

    print(export_gguf(args.gguf, args.adapter, args.weight_type))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from train.sft import OutputInUse

    try:
        {"sft": run_sft, "evaluate": run_evaluate, "style": run_style, "selector": run_selector,
         "lines": run_lines, "rerank": run_rerank, "prompts": run_prompts, "blind": run_blind, "preferences": run_preferences,
         "ceiling": run_ceiling, "export": run_export}[args.command](args)
    except (ModelLoadError, StyleModelError, SelectorError, TrainDataError, OutputInUse, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
