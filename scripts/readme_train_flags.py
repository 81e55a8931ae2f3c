"""Regenerate the `rnnlab train` flag table in README.md from the CLI's own flag list.

.venv/bin/python scripts/readme_train_flags.py
"""

from pathlib import Path

from rnnlab.cli.train import FLAGS, _default

SPECIAL = {
    "--data": "bundled Tiny Shakespeare",
    "--max-time": "300 (none if only `--max-steps` is given)",
    "--tf-k": "1 (linear), 0.999 (exponential), 500 (inverse_sigmoid)",
}


def table() -> str:
    rows = [
        "| flag | default | meaning |",
        "|---|---|---|",
        "| `--config FILE` | none | TOML file or preset name (`demo`, `shakespeare-30min`); "
        "flags override it |",
        "| `--resume RUN_DIR` | none | continue that run (or `RUN_DIR/last`) in place from "
        "`last/`; flags override its saved config |",
    ]
    for flag, (group, name), options, text in FLAGS:
        shown = flag
        if options.get("metavar"):
            shown += f" {options['metavar']}"
        if options.get("choices"):
            shown += " {" + ",".join(options["choices"]) + "}"
        default = "off" if options.get("action") else _default(group, name)
        default = SPECIAL.get(flag, "none" if default is None else default)
        cell = default if isinstance(default, str) and " " in default else f"`{default}`"
        rows.append(f"| `{shown}` | {cell} | {text} |")
    rows += [
        "| `--no-progress` | off | hide the progress bar |",
        "| `--no-tensorboard` | off | do not log to TensorBoard even if it is installed |",
    ]
    return "\n".join(rows)


def main() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text()
    start = text.index("### `rnnlab train`")
    end = text.index("### `rnnlab sample CHECKPOINT`")
    readme.write_text(text[:start] + "### `rnnlab train`\n\n" + table() + "\n\n" + text[end:])


if __name__ == "__main__":
    main()
