"""Results: record fields and ranking, file formats written and read, writers, and analysis."""

from epsweep.results.analysis import Report, build_report
from epsweep.results.files import FileClaim, check_writable, write_atomic
from epsweep.results.formats import FORMATS, MACHINE_FORMATS, render_machine
from epsweep.results.reading import Loaded, read_results
from epsweep.results.records import FIELDS, best_index, fold_seeds, rank_key, setting_key
from epsweep.results.writers import CsvWriter, JsonlWriter, JsonWriter, MemoryWriter, Writer, writer_for

__all__ = [
    "FIELDS", "FORMATS", "MACHINE_FORMATS", "CsvWriter", "FileClaim", "JsonWriter", "JsonlWriter", "Loaded",
    "MemoryWriter", "Report", "Writer", "best_index", "build_report", "check_writable", "fold_seeds", "rank_key",
    "read_results", "render_machine", "setting_key", "write_atomic", "writer_for",
]
