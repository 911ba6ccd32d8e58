"""`make bench`: runs every benchmark and writes BENCHMARKS.md from their sections."""

import argparse
import os

from benchmarks import data_plane, dicom_node, input_pipeline, trainer_loop

HEADER = """# Benchmarks

Written by `make bench` (`python -m benchmarks.run`); every figure below was measured
by that run on the machine it names, unless a line says it is worked out on paper.
Re-run it after touching performance-relevant code.

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work_dir", default="bench_output")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                        help="Data plane at the full RSNA size too (writes ~4 GB of DICOMs once, reused); "
                             "--no-full measures 3,000 files only.")
    parser.add_argument("--note", default="", help="A remark on the conditions, printed with the data-plane figures.")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    sections = [
        data_plane.main([f"--work_dir={args.work_dir}", "--full" if args.full else "--no-full",
                         f"--note={args.note}"]),
        input_pipeline.main([f"--work_dir={os.path.join(args.work_dir, 'input_pipeline')}"]),
        trainer_loop.main([f"--work_dir={os.path.join(args.work_dir, 'trainer_loop')}"]),
        dicom_node.main([f"--work_dir={os.path.join(args.work_dir, 'dicom_node')}"]),
    ]
    with open(args.output, "w") as handle:
        handle.write(HEADER + "\n".join(sections))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
