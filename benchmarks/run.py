"""`make bench`: runs every benchmark and writes BENCHMARKS.md from their sections.

`--sections` runs only some of them and keeps the others' last figures from the file, so a
change to one part of the system is re-measured without an hour of the rest.
"""

import argparse
import os
import re

from benchmarks import data_plane, dicom_node, input_pipeline, real_data, trainer_loop

HEADER = """# Benchmarks

Written by `make bench` (`python -m benchmarks.run`); every figure below was measured
by that run on the machine it names, unless a line says it is worked out on paper.
Re-run it after touching performance-relevant code.

"""
SECTIONS = ("data_plane", "input_pipeline", "trainer_loop", "dicom_node", "real_data")


def measure(name: str, args: argparse.Namespace) -> str:
    """One section's text, measured now."""
    work_dir = os.path.join(args.work_dir, name)
    if name == "data_plane":
        return data_plane.main([f"--work_dir={args.work_dir}", "--full" if args.full else "--no-full",
                                f"--note={args.note}"])
    module = {"input_pipeline": input_pipeline, "trainer_loop": trainer_loop, "dicom_node": dicom_node,
              "real_data": real_data}[name]
    return module.main([f"--work_dir={work_dir}"])


def kept_sections(path: str) -> list[str]:
    """The `## ` sections of the current file, in order, each with its subsections."""
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        text = handle.read()
    return [part if part.endswith("\n") else part + "\n" for part in re.split(r"(?m)^(?=## )", text)[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work_dir", default="bench_output")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"Comma-separated, from {', '.join(SECTIONS)}; the others keep their text.")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                        help="Data plane at the full RSNA size too (writes ~4 GB of DICOMs once, reused); "
                             "--no-full measures 3,000 files only.")
    parser.add_argument("--note", default="", help="A remark on the conditions, printed with the data-plane figures.")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    if unknown := sorted(set(chosen) - set(SECTIONS)):
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    os.makedirs(args.work_dir, exist_ok=True)
    sections = {part.splitlines()[0]: part for part in kept_sections(args.output)}
    # A measured section replaces the one of the same title where it stood; a new title goes at the end.
    for name in chosen:
        text = measure(name, args)
        sections[text.splitlines()[0]] = text
    with open(args.output, "w") as handle:
        handle.write(HEADER + "\n".join(section.rstrip("\n") + "\n" for section in sections.values()))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
