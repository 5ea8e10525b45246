"""The ``aqrecipe`` command line: ``main(argv) -> int``.

User mistakes (an :class:`~aqrecipe.errors.AqrecipeError`) print a message and
a hint, never a traceback, and exit with code 2. ``--json`` prints one JSON
document on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from aqrecipe import __version__
from aqrecipe.cli.terminal import PrintableFormatter, printable
from aqrecipe.errors import EXIT_FAILURE, EXIT_OK, EXIT_USER_ERROR, AqrecipeError, RecipeError
from aqrecipe.recipe.issues import recipe_error

if TYPE_CHECKING:
    from aqrecipe.apply.options import ApplyOptions, ApplyResult
    from aqrecipe.plan import Plan
    from aqrecipe.recipe import Recipe

log = logging.getLogger("aqrecipe")


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=1, sort_keys=True) if args.json else printable(text))


def _set_rules(args: argparse.Namespace) -> list:
    from aqrecipe.plan import parse_set_option

    return [parse_set_option(s) for s in getattr(args, "set", None) or []]


# --- validate / compile ---------------------------------------------------------
def _model_issues(recipe: Recipe, plan: Plan) -> list:
    """Model-aware recipe problems (rules that match nothing) as positioned issues."""
    from aqrecipe.plan.rules import NO_MATCH, split_unused_entry

    issues = []
    for text in plan.unused_rules:
        if text.startswith("rules["):
            index = int(text[len("rules[") : text.index("]")])
            rule = recipe.quantization.rules[index]
            reason = split_unused_entry(text)[1]  # matches nothing, only F32 tensors, a duplicate, shadowed
            issues.append(
                recipe.issue_at(
                    f"$.quantization.rules[{index}].match",
                    "R201",
                    f"rule {rule.match_text!r} " + ("matches no tensor of the model" if reason == NO_MATCH
                                                    else f"chooses no tensor: {reason}"),
                    value=rule.match_text,
                    allowed="a GGUF name such as blk.0.attn_v.weight or an HF name; see `aqrecipe compile`"
                    if reason == NO_MATCH else "remove the rule, or list it before the rules that take its "
                    "tensors (within a kind the first match wins; exact > re: > glob)",
                )
            )
    return issues


def cmd_validate(args: argparse.Namespace) -> int:
    from aqrecipe.plan.from_recipe import plan_from_recipe
    from aqrecipe.errors import ModelError
    from aqrecipe.recipe import load_recipe

    recipe = load_recipe(Path(args.recipe))
    issues = []
    if not args.schema_only:
        try:
            plan = plan_from_recipe(recipe, model_override=args.model, allow_requantize=args.allow_requantize)
            issues = _model_issues(recipe, plan)
        except ModelError as exc:
            issues = [recipe.issue_at("$.model", "R202", str(exc.message), value=recipe.model, allowed=exc.hint)]
        from aqrecipe.apply.preflight import missing_file_issues

        issues += missing_file_issues(recipe)  # R203-R205: imatrix, calibration and evaluation files
    if issues:
        raise recipe_error(issues, args.recipe)
    _emit(args, {"valid": True, "recipe": args.recipe}, f"{args.recipe}: valid")
    return EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    from aqrecipe.plan.from_recipe import plan_from_recipe
    from aqrecipe.formats.fileio import atomic_write_text
    from aqrecipe.plan import render_plan
    from aqrecipe.recipe import load_recipe

    recipe = load_recipe(Path(args.recipe))
    plan = plan_from_recipe(recipe, extra_rules=_set_rules(args), model_override=args.model,
                            allow_requantize=args.allow_requantize)
    for issue in _model_issues(recipe, plan):
        log.warning("%s", issue.format())
    if args.output:
        from aqrecipe.apply.guard import recipe_reads
        from aqrecipe.formats.paths import check_write_targets

        check_write_targets({"plan output (-o)": Path(args.output)}, recipe_reads(recipe, plan.model_path))
        atomic_write_text(Path(args.output), plan.to_json())
        log.info("plan written to %s (sha256 %s)", args.output, plan.sha256()[:16])
    _emit(args, plan.to_dict(), render_plan(plan, verbose=not args.summary))
    return EXIT_OK


# --- apply / quantize --------------------------------------------------------------
def _print_apply(args: argparse.Namespace, result: ApplyResult) -> None:
    from aqrecipe.cli.apply_flags import summary_text

    _emit(args, result.to_dict(), summary_text(result))


def _apply_options(args: argparse.Namespace) -> ApplyOptions:
    from aqrecipe.cli.apply_flags import apply_options

    # quantize already wrote its --set rules into the recipe it built
    return apply_options(args, _set_rules(args) if args.command == "apply" else ())


def _exit_code(result: ApplyResult) -> int:
    """The exit code of a finished apply: the worst failed check of its output, else 0.

    A failed evaluation (say llama.cpp crashed) is printed as the error it was and
    gives its code; a strict coherence check that found a collapse gives 1 (for CI).
    """
    codes = [EXIT_OK]
    for failure in result.extra.get("evaluation_failed", ()):
        print(printable(f"error[{failure['code']}]: {failure['stage']} failed: {failure['message']}"), file=sys.stderr)
        if failure.get("hint"):
            print(printable(f"  hint: {failure['hint']}"), file=sys.stderr)
        codes.append(failure["exit_code"])
    coherence = result.extra.get("coherence")
    if coherence and coherence.get("strict") and coherence.get("passed") is False:
        codes.append(EXIT_FAILURE)
    return max(codes)


def cmd_apply(args: argparse.Namespace) -> int:
    from aqrecipe.apply.run import run_apply
    from aqrecipe.plan.from_recipe import load_target

    plan, recipe = load_target(Path(args.target), extra_rules=_set_rules(args), model_override=args.model,
                               allow_requantize=args.allow_requantize)
    dest = args.output or (recipe.resolve_path(recipe.output.path) if recipe and recipe.output.path else None)
    if dest is None:
        raise AqrecipeError("no output path", hint="pass -o OUT.gguf or set output.path in the recipe", code="AQ701")
    options = _apply_options(args)
    if str(dest).endswith(("/", "\\")) or (Path(dest) / "config.json").is_file():
        from dataclasses import replace

        options = replace(options, output_format="safetensors")  # -o DIR/: an HF folder
    result = run_apply(plan, recipe, Path(dest), options)
    _print_apply(args, result)
    return _exit_code(result)


def cmd_quantize(args: argparse.Namespace) -> int:
    from aqrecipe.apply.run import run_apply
    from aqrecipe.cli.shortcut import shortcut_recipe

    recipe = shortcut_recipe(
        args.model,
        args.type,
        set_options=args.set or [],
        output=args.output,
        imatrix=args.imatrix,
        protect_super_weights=args.protect_super_weights,
        target_bpw=args.target_bpw,
        rounding=args.rounding,
    )
    if args.emit_recipe:
        from aqrecipe.recipe import dump_recipe_yaml

        print(dump_recipe_yaml(recipe), end="")
        return EXIT_OK
    if not args.output:
        raise AqrecipeError("no output path", hint="pass -o OUT.gguf (or --emit-recipe to print the recipe)", code="AQ701")
    from aqrecipe.plan.from_recipe import plan_from_recipe

    plan = plan_from_recipe(recipe, allow_requantize=args.allow_requantize)
    result = run_apply(plan, recipe, Path(args.output), _apply_options(args))
    _print_apply(args, result)
    return _exit_code(result)


# --- eval / inspect ------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from aqrecipe.evaluate import evaluate, format_report_table

    if args.simulate:
        from aqrecipe.apply.simulate import eval_command

        data, text = eval_command(args, _set_rules(args))
        _emit(args, data, text)
        return EXIT_OK
    if args.imatrix or args.set or args.work_dir or args.restart:
        from aqrecipe.errors import EvalError

        raise EvalError("--imatrix, --set, --work-dir and --restart only apply with --simulate",
                        hint="add --simulate to evaluate a recipe's simulated quantization, or drop them")
    report = evaluate(
        args.model,
        reference=args.reference,
        text=Path(args.text) if args.text else None,
        chunks=args.chunks,
        context=args.context,
    )
    _emit(args, report.to_dict(), format_report_table(report))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from aqrecipe.cli.inspect import inspect_path, inspect_supported

    if args.supported:
        data, text = inspect_supported()
    elif args.path is None:
        raise AqrecipeError("inspect needs a PATH (or --supported)", hint="aqrecipe inspect model.gguf",
                            code="AQ301")
    else:
        data, text = inspect_path(Path(args.path))
    _emit(args, data, text)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from aqrecipe.cli.report import run

    return run(args)


def cmd_imatrix(args: argparse.Namespace) -> int:
    from aqrecipe.cli.imatrix import run_imatrix_command

    return run_imatrix_command(args)


# --- parser ----------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aqrecipe", description="LLM quantization compiler: recipe -> plan -> GGUF.")
    parser.add_argument("--version", action="version", version=f"aqrecipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        _add_common(p)
        return p

    p = add("validate", cmd_validate, "check a recipe against the schema and the model")
    p.add_argument("recipe")
    p.add_argument("--model", help="override the recipe's model")
    p.add_argument("--schema-only", action="store_true", help="skip the checks that open the model")
    from aqrecipe.cli.apply_flags import add_allow_requantize_flag, add_apply_arguments, add_quantize_arguments

    add_allow_requantize_flag(p)  # validate's

    p = add("compile", cmd_compile, "print the execution plan: per-tensor types, bytes, rules, totals")
    p.add_argument("recipe")
    p.add_argument("--model", help="override the recipe's model")
    p.add_argument("-o", "--output", help="write the plan as JSON (input for apply)")
    p.add_argument("--set", action="append", metavar="PATTERN=TYPE", help="extra rule, before the recipe's")
    p.add_argument("--summary", action="store_true", help="totals only, no per-tensor table")
    add_allow_requantize_flag(p)  # compile's

    add_apply_arguments(add("apply", cmd_apply, "run a recipe or a compiled plan and write the quantized model"))
    add_quantize_arguments(add("quantize", cmd_quantize, "llama-quantize-like shortcut: MODEL --type T -o OUT"))

    p = add("eval", cmd_eval, "perplexity, KL divergence and top-1 agreement of a model")
    p.add_argument("model", help="a .gguf file, a Hugging Face folder or 'demo'; with --simulate a recipe or plan")
    p.add_argument("--reference", help="the unquantized model to compare against")
    p.add_argument("--text", help="evaluation text file (default: built-in Wikipedia eval split)")
    p.add_argument("--chunks", type=int, default=16, help="number of windows (default 16)")
    p.add_argument("--context", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--simulate", action="store_true",
                   help="MODEL is a recipe or plan: run its stages, quantize+dequantize every tensor in torch "
                        "(exact super weights restored) and compare with the original model")
    p.add_argument("--imatrix", metavar="FILE", help="--simulate: importance matrix for the quantizer")
    p.add_argument("--set", action="append", metavar="PATTERN=TYPE", help="--simulate: extra rule, before the recipe's")
    p.add_argument("--work-dir", help="--simulate: stage checkpoints (default: beside the recipe)")
    p.add_argument("--restart", action="store_true", help="--simulate: discard checkpoints of an earlier run")

    p = add("inspect", cmd_inspect, "describe a GGUF file, a plan or an imatrix; --supported: the model list")
    p.add_argument("path", nargs="?")
    p.add_argument("--supported", action="store_true",
                   help="list the architectures llama.cpp's converter reads and the families tested end to end")

    p = sub.add_parser("report", help="importance report: per-layer table, super weights, --plot PNG")
    p.set_defaults(func=cmd_report)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from aqrecipe.cli.report import add_arguments as add_report_arguments

    add_report_arguments(p)

    p = sub.add_parser("imatrix", help="compute, show or convert importance matrices")
    p.set_defaults(func=cmd_imatrix)
    _add_common(p)
    from aqrecipe.cli.imatrix import add_imatrix_arguments

    add_imatrix_arguments(p)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:  # log records quote tensor names and paths too
        handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))


def _print_error(exc: AqrecipeError, as_json: bool) -> None:
    """The error as one JSON document on stdout, or as text (control characters escaped) on stderr.

    It runs after the command, outside main's broken-pipe guard, so it has its own:
    ``aqrecipe ... --json | head`` that closed the pipe ends quietly, not in a traceback.
    """
    try:
        if as_json:
            payload: dict[str, Any] = {"error": {"code": exc.code, "type": type(exc).__name__,
                                                 "message": exc.message, "hint": exc.hint}}
            if isinstance(exc, RecipeError):
                payload["error"]["issues"] = [i.to_dict() for i in exc.issues]
            print(json.dumps(payload, indent=1, sort_keys=True), flush=True)
            return
        print(printable(f"error[{exc.code}]: {exc.message}"), file=sys.stderr)  # a RecipeError's lists its issues
        if exc.hint:
            print(printable(f"  hint: {exc.hint}"), file=sys.stderr)
        sys.stderr.flush()
    except BrokenPipeError:  # the reader left (stdout, or stderr under 2>&1): nothing more can be said
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            os.dup2(devnull, stream.fileno())  # so the interpreter's final flush does not fail again


def _os_error(exc: OSError, output: str | None) -> AqrecipeError:
    """An OSError as a user-facing error: a full disk, a file-size limit or a refused write
    inside the output's folder (``output``: the -o path) is an OutputError."""
    import errno

    from aqrecipe.errors import OutputError

    what = str(exc.strerror or exc) + (f": {exc.filename}" if exc.filename else "")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputError(
            f"cannot write ({what})",
            hint="free some disk space, raise the file-size limit (ulimit -f) or write elsewhere",
        )
    if output and exc.filename and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        folder = os.path.dirname(os.path.abspath(output))
        if os.path.abspath(os.fsdecode(exc.filename)).startswith(folder + os.sep):
            return OutputError(
                f"output folder {folder} is not writable ({what})",
                hint="choose a folder you can write to, or fix its permissions",
            )
    return AqrecipeError(what, hint="check that the path exists and that you may read (or write) it")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    from aqrecipe.cli.termination import EXIT_TERMINATED, Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # SIGTERM unwinds through the same cleanup as Ctrl-C
            return args.func(args)
    except AqrecipeError as exc:
        _print_error(exc, getattr(args, "json", False))
        return exc.exit_code
    except BrokenPipeError:  # `aqrecipe ... | head` closed the pipe: stop quietly, like other CLI tools
        _silence_stdout()
        return 141
    except OSError as exc:  # file trouble no module foresaw: still a message, not a traceback
        log.debug("unhandled OSError", exc_info=True)
        _print_error(_os_error(exc, getattr(args, "output", None)), getattr(args, "json", False))
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated: staging files and the lock are gone
        terminated = isinstance(exc, Terminated)
        print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
        return EXIT_TERMINATED if terminated else 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
