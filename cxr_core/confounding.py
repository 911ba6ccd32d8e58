"""Which class distinctions the image source alone gives away: the dataset's built-in shortcut.

Images carry their source in their look (hospital, scanner, processing, framing,
markers), and a model can learn to recognise it instead of the lungs (DeGrave, Janizek
and Lee, Nature Machine Intelligence, 2021). From a table of originals per source and
class, three findings follow:
- a class whose every source holds that class only: "this class vs the rest" can be
  learnt from the source alone (in real-cxr, COVID-19 from ieee8023 only);
- a class drawn from one source that holds other classes too: an image from any other
  source is never that class, so the source carries much of "this class vs the rest"
  (in the seed's data, COVID-19 from covid-chestxray-dataset only, RSNA holding none);
- two classes that never share a source: telling them apart can be learnt from the
  source alone.
Only the distinctions inside a source (within-source ROC-AUC) show what the model reads.
"""

import dataclasses
import itertools
from collections.abc import Mapping

from cxr_core import contract


@dataclasses.dataclass(frozen=True)
class Confounding:
    """The classes and class pairs the source separates on its own."""

    isolated_classes: dict[str, tuple[str, ...]]  # class → its sources, each of which holds no other class
    single_source_classes: dict[str, str]  # class → its one source, which holds other classes too
    separated_pairs: tuple[tuple[str, str], ...]  # classes that never share a source (isolated ones left out)

    def warnings(self) -> list[str]:
        """One sentence per finding, for the first lines of a summary or report."""
        lines = [f"{name} comes only from {' and '.join(sources)}, which "
                 f"{'holds' if len(sources) == 1 else 'hold'} no other class: {name} vs the rest can be learnt from "
                 "the source; only within-source figures show what the model reads"
                 for name, sources in self.isolated_classes.items()]
        lines += [f"{name} comes only from {source}: no image from another source is {name}, so the source "
                  f"carries much of {name} vs the rest; read the within-source figures"
                  for name, source in self.single_source_classes.items()]
        lines += [f"{first} and {second} never share a source: {first} vs {second} can be learnt from the source"
                  for first, second in self.separated_pairs]
        return lines

    def to_json(self) -> dict:
        return {"isolated_classes": {name: list(sources) for name, sources in self.isolated_classes.items()},
                "single_source_classes": dict(self.single_source_classes),
                "separated_pairs": [list(pair) for pair in self.separated_pairs], "warnings": self.warnings()}


def find_confounding(originals_by_source: Mapping[str, Mapping[str, int]]) -> Confounding:
    """The findings for {source: {class: originals}}; none when the data has a single source."""
    if len(originals_by_source) < 2:
        return Confounding({}, {}, ())
    sources_of = {name: {source for source, classes in originals_by_source.items() if classes.get(name, 0)}
                  for name in contract.CLASS_NAMES}
    present = [name for name in contract.CLASS_NAMES if sources_of[name]]
    isolated = {name: tuple(sorted(sources_of[name])) for name in present
                if all(not originals_by_source[source].get(other, 0)
                       for source in sources_of[name] for other in present if other != name)}
    # Sources holding only isolated classes add nothing: that they are never this class is their own finding.
    informative = {source for source, classes in originals_by_source.items()
                   if any(classes.get(name, 0) for name in present if name not in isolated)}
    single = {name: next(iter(sources_of[name])) for name in present
              if name not in isolated and len(sources_of[name]) == 1 and informative - sources_of[name]}
    separated = tuple((first, second) for first, second in itertools.combinations(present, 2)
                      if first not in isolated and second not in isolated
                      and not sources_of[first] & sources_of[second])
    return Confounding(isolated, single, separated)
