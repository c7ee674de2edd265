"""Document quality filters: each a small class answering "keep, or drop with this reason"."""

from lmforge.tasks.data.filters.base import DocumentFilter, first_rejection
from lmforge.tasks.data.filters.c4 import C4QualityFilter
from lmforge.tasks.data.filters.fineweb import FineWebQualityFilter
from lmforge.tasks.data.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from lmforge.tasks.data.filters.pii import PIIFormatter
from lmforge.tasks.data.filters.url import URLFilter

__all__ = [
    "C4QualityFilter",
    "DocumentFilter",
    "FineWebQualityFilter",
    "GopherQualityFilter",
    "GopherRepetitionFilter",
    "PIIFormatter",
    "URLFilter",
    "first_rejection",
]
