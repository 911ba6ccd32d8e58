"""Which listed images are used, and as which class: the selection policy of every source.

Pure functions of a row's values (no I/O, no Beam), each returning a `Verdict`: the
image's class, or the stage, kind and reason of its rejection. `label` rejections are
rows that cannot be read as a labelled image; `select` rejections are images this
project chooses not to train on (views, modalities, unlabelled findings, RSNA "Not
Normal"), listed all the same so that inputs = used + rejected.
"""

import dataclasses
import re

# RSNA detailed classes (stage_2_detailed_class_info.csv).
RSNA_NORMAL = "Normal"
RSNA_NOT_NORMAL = "No Lung Opacity / Not Normal"
RSNA_OPACITY = "Lung Opacity"  # Target=1; the label file decides pneumonia, this class agrees with it
NOT_NORMAL_POLICIES = ("exclude", "pneumonia")

COVID_XRAY_MODALITY = "x-ray"
COVID_UNLABELLED_FINDINGS = frozenset({"", "todo", "unknown"})
# Findings that are not an infection: neither "pneumonia" in this project's sense nor normal.
NON_INFECTIVE_FINDING = re.compile(r"\b(ards|lipoid)\b", re.IGNORECASE)
INFECTIVE_FINDING = re.compile(
    r"pneumonia|bacterial|viral|fungal|sars|mers|influenza|h1n1|varicella|herpes|"
    r"streptococcus|staphylococcus|klebsiella|e\.?\s?coli|legionella|chlamydophila|"
    r"mycoplasma|pneumocystis|aspergillosis|nocardia|tuberculosis|candida|histoplasmosis",
    re.IGNORECASE)

# Views kept unless --allowed_views says otherwise: the frontal ones. Laterals (L, LL, RL,
# LATERAL), CT planes and anything else are rejected, from the listing or the DICOM header.
DEFAULT_ALLOWED_VIEWS = "PA,AP,AP SUPINE,AP SEMI ERECT,AP ERECT"
RADIOGRAPH_MODALITIES = ("CR", "DX")

CLASS_ALIASES = {"normal": "normal", "pneumonia": "pneumonia", "covid19": "covid19",
                 "covid-19": "covid19", "covid": "covid19"}
# Class folders of image-folder releases (Ozturk et al.'s No_findings/Pneumonia/Covid-19, Kermany et
# al.'s NORMAL/PNEUMONIA, ...), by `normalize_folder_name`. Bacterial and viral pneumonia are both
# infections other than COVID-19, so this project's pneumonia.
DEFAULT_FOLDER_CLASSES = {
    "normal": "normal", "nofinding": "normal", "nofindings": "normal", "healthy": "normal",
    "pneumonia": "pneumonia", "bacteria": "pneumonia", "bacterial": "pneumonia", "viral": "pneumonia",
    "virus": "pneumonia", "bacterialpneumonia": "pneumonia", "viralpneumonia": "pneumonia",
    "covid": "covid19", "covid19": "covid19", "sarscov2": "covid19",
}
MISSING_PATIENT_IDS = frozenset({"", "nan", "null", "none", "na", "n/a"})


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What becomes of one listed image: its class (`label`), or why it is not used.

    A rejection has no label and names the `stage` it left at, a stable `kind` and the
    `reason`, which never repeats a path or a patient id. Build one with `accept` or
    `reject` and branch on `accepted`.
    """

    label: str = ""
    stage: str = ""
    kind: str = ""
    reason: str = ""

    @classmethod
    def accept(cls, label: str) -> "Verdict":
        return cls(label=label)

    @classmethod
    def reject(cls, stage: str, kind: str, reason: str) -> "Verdict":
        return cls(stage=stage, kind=kind, reason=reason)

    @property
    def accepted(self) -> bool:
        return bool(self.label)


def is_missing_patient_id(patient_id: str) -> bool:
    """Empty ids and spreadsheet placeholders would merge unrelated patients into one."""
    return patient_id.strip().lower() in MISSING_PATIENT_IDS


def missing_patient_id(column: str) -> Verdict:
    """The rejection of a row whose `column` holds no usable patient id."""
    return Verdict.reject("label", "missing_patient_id", f"{column} is empty or a placeholder (nan, null, none)")


def normalize_view(view: str) -> str:
    """`ap  supine` → `AP SUPINE`."""
    return " ".join(view.upper().split())


def parse_allowed_views(text: str) -> frozenset[str]:
    """`--allowed_views` (comma-separated) → normalised view names."""
    views = frozenset(normalize_view(view) for view in text.split(",") if view.strip())
    if not views:
        raise ValueError(f"--allowed_views must name at least one view, e.g. {DEFAULT_ALLOWED_VIEWS}")
    return views


def view_problem(view: str, allowed_views: frozenset[str], origin: str, required: bool = False) -> str | None:
    """Why an image with this view is not used (`origin` says where the view came from), or None.

    An unknown (empty) view passes unless `required`: a CSV or DICOM header that says
    nothing is the user's call, a view it does state is checked.
    """
    view = normalize_view(view)
    if view in allowed_views or (not view and not required):
        return None
    shown = repr(view) if view else "no view"
    return f"{origin} {shown} is not an allowed view ({', '.join(sorted(allowed_views))}; see --allowed_views)"


def dicom_modality_problem(modality: str) -> str | None:
    """Why a DICOM header's modality is not a chest radiograph, or None (unknown passes)."""
    modality = modality.strip().upper()
    if not modality or modality in RADIOGRAPH_MODALITIES:
        return None
    return f"DICOM modality {modality!r} is not a radiograph ({' or '.join(RADIOGRAPH_MODALITIES)})"


def header_verdict(label: str, view: str, modality: str, allowed_views: frozenset[str]) -> Verdict:
    """`label` kept, unless a decoded file's own header says it is not a frontal radiograph."""
    if problem := dicom_modality_problem(modality):
        return Verdict.reject("select", "not_xray", problem)
    if problem := view_problem(view, allowed_views, "DICOM ViewPosition"):
        return Verdict.reject("select", "view_not_allowed", problem)
    return Verdict.accept(label)


def rsna_verdict(targets: set[str], detailed_classes: set[str] | None, not_normal_policy: str,
                 class_info_file: str) -> Verdict:
    """An RSNA patient's class from its `Target` values and detailed classes.

    `detailed_classes` is None without a class-info file (`class_info_file` names it in
    reasons), else the patient's classes in it.
    """
    if len(targets) != 1 or not targets <= {"0", "1"}:
        return Verdict.reject("label", "invalid_target", f"Target values {sorted(targets)} are not a single 0 or 1")
    if targets == {"1"}:
        return Verdict.accept("pneumonia")
    if detailed_classes is None:
        return Verdict.accept("normal")
    if not detailed_classes:
        return Verdict.reject("label", "missing_detailed_class",
                              f"Target=0 but the patient is not in {class_info_file}, so normal and not normal "
                              "cannot be told apart")
    if len(detailed_classes) > 1:
        return Verdict.reject("label", "inconsistent_class", f"detailed classes {sorted(detailed_classes)} disagree")
    [detailed_class] = detailed_classes
    if detailed_class == RSNA_NORMAL:
        return Verdict.accept("normal")
    if detailed_class == RSNA_NOT_NORMAL:
        if not_normal_policy == "pneumonia":
            return Verdict.accept("pneumonia")
        return Verdict.reject("select", "excluded_not_normal",
                              "'No Lung Opacity / Not Normal' is excluded (--rsna_not_normal=pneumonia includes it)")
    return Verdict.reject("label", "inconsistent_class", f"Target=0 but detailed class is {detailed_class!r}")


def covid_finding_verdict(finding: str) -> Verdict:
    """covid-chestxray-dataset `finding` → class; `todo`/`Unknown` are not labelled, so not a label error."""
    normalized = finding.strip()
    if "covid-19" in normalized.lower():
        return Verdict.accept("covid19")
    if normalized.lower() == "no finding":
        return Verdict.accept("normal")
    if normalized.lower() in COVID_UNLABELLED_FINDINGS:
        return Verdict.reject("select", "unlabelled_finding", f"finding {finding!r} is not a diagnosis")
    if NON_INFECTIVE_FINDING.search(normalized):
        return Verdict.reject("label", "non_infective_finding", f"finding {finding!r} is not an infection")
    if INFECTIVE_FINDING.search(normalized):
        return Verdict.accept("pneumonia")
    return Verdict.reject("label", "unknown_finding", f"finding {finding!r} is not a known class")


def covid_verdict(patient_id: str, view: str, modality: str, finding: str,
                  allowed_views: frozenset[str]) -> Verdict:
    """A covid-chestxray-dataset row: an X-ray in an allowed view with an infective or no finding."""
    if is_missing_patient_id(patient_id):
        return missing_patient_id("patientid")
    if modality and modality.strip().lower() != COVID_XRAY_MODALITY:
        return Verdict.reject("select", "not_xray", f"modality {modality!r} is not X-ray")
    if problem := view_problem(view, allowed_views, "listed view", required=True):
        return Verdict.reject("select", "view_not_allowed", problem)
    return covid_finding_verdict(finding)


def csv_verdict(image_key: str, label_text: str, patient_id: str, view: str,
                allowed_views: frozenset[str]) -> Verdict:
    """A row of the user's CSV: an image, a known class, a patient, and no view outside the allowed ones."""
    if not image_key:
        return Verdict.reject("label", "missing_image", "image_uri is empty")
    label = CLASS_ALIASES.get(label_text.lower())
    if label is None:
        return Verdict.reject("label", "unknown_label",
                              f"label {label_text!r} is not one of normal, pneumonia, covid19")
    if is_missing_patient_id(patient_id):
        return missing_patient_id("patient_id")
    if problem := view_problem(view, allowed_views, "listed view"):
        return Verdict.reject("select", "view_not_allowed", problem)
    return Verdict.accept(label)


def normalize_folder_name(name: str) -> str:
    """`No_findings`, `no finding`, `NO-FINDINGS` → `nofinding(s)`: case, spaces, `_` and `-` ignored."""
    return re.sub(r"[\s_-]+", "", name.lower())


def parse_folder_classes(text: str) -> dict[str, str]:
    """`--folder_classes` (`FOLDER=CLASS,...`) over the defaults → normalised folder name → class."""
    classes = dict(DEFAULT_FOLDER_CLASSES)
    for pair in filter(None, (pair.strip() for pair in text.split(","))):
        folder, equals, class_text = pair.partition("=")
        label = CLASS_ALIASES.get(class_text.strip().lower())
        if not equals or not normalize_folder_name(folder) or label is None:
            raise ValueError("--folder_classes must be FOLDER=CLASS pairs with CLASS one of normal, pneumonia, "
                             f"covid19, e.g. No_findings=normal,Covid-19=covid19; got {pair!r}")
        classes[normalize_folder_name(folder)] = label
    return classes


def image_folder_verdict(folder: str, folder_classes: dict[str, str], patient_id: str) -> Verdict:
    """A file of an image folder: the class its sub-folder names, if it has a patient.

    The reasons name neither the folder nor the file: folders are often named after patients.
    """
    label = folder_classes.get(normalize_folder_name(folder))
    if label is None:
        return Verdict.reject("label", "unknown_folder",
                              "the sub-folder it is in names no class (map it with --folder_classes)")
    if is_missing_patient_id(patient_id):
        return Verdict.reject("label", "missing_patient_id",
                              "--patient_id_regex finds no patient id in the file name")
    return Verdict.accept(label)
