"""Embedded data sets: files made by the scripts in ``scripts/`` and shipped with the package,
seeded seq2seq tasks with gold alignments generated on the fly (:mod:`.alignment_tasks`),
seeded k-hop pointer chasing over sets of items (:mod:`.pointer_chasing`), and sequence
classification tasks with out-of-distribution sets (:class:`.ClassificationData`): grey digits as
patch sequences (:mod:`.digits_patches`) and sentence valence with a known Bayes posterior
(:mod:`.valence`).
"""

from pyro_attention.data.alignment_tasks import (
    AlignmentBatch,
    AlignmentDataset,
    AlignmentTask,
    DatesTask,
    Example,
    Lexicon,
    ReverseTask,
    TranslationTask,
    Vocabulary,
    get_task,
    make_alignment_dataset,
    register_task,
    task_names,
)
from pyro_attention.data.classification import ClassificationData
from pyro_attention.data.digits import load_digits_binary
from pyro_attention.data.digits_patches import (
    DigitsGrey,
    DigitsPatchTask,
    digits_grey_metadata,
    digits_patch_task,
    image_patches,
    load_digits_grey,
    patches_to_images,
)
from pyro_attention.data.gmm import load_gmm2d
from pyro_attention.data.pointer_chasing import PointerChasing, make_pointer_chasing
from pyro_attention.data.valence import (
    ValenceLexicon,
    ValenceTask,
    bayes_posterior,
    make_valence_task,
)

__all__ = [
    "AlignmentBatch",
    "AlignmentDataset",
    "AlignmentTask",
    "ClassificationData",
    "DatesTask",
    "DigitsGrey",
    "DigitsPatchTask",
    "Example",
    "Lexicon",
    "PointerChasing",
    "ReverseTask",
    "TranslationTask",
    "ValenceLexicon",
    "ValenceTask",
    "Vocabulary",
    "bayes_posterior",
    "digits_grey_metadata",
    "digits_patch_task",
    "get_task",
    "image_patches",
    "load_digits_binary",
    "load_digits_grey",
    "load_gmm2d",
    "make_alignment_dataset",
    "make_pointer_chasing",
    "make_valence_task",
    "patches_to_images",
    "register_task",
    "task_names",
]
