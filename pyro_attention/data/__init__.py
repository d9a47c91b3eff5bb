"""Embedded data sets: files made by the scripts in ``scripts/`` and shipped with the package,
and seeded seq2seq tasks with gold alignments generated on the fly (:mod:`.alignment_tasks`).
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
from pyro_attention.data.digits import load_digits_binary
from pyro_attention.data.gmm import load_gmm2d

__all__ = [
    "AlignmentBatch",
    "AlignmentDataset",
    "AlignmentTask",
    "DatesTask",
    "Example",
    "Lexicon",
    "ReverseTask",
    "TranslationTask",
    "Vocabulary",
    "get_task",
    "load_digits_binary",
    "load_gmm2d",
    "make_alignment_dataset",
    "register_task",
    "task_names",
]
