"""DICOM in, DICOM-SEG out: read a source series, code the targets, write and read back segmentations.

`pipeline.segment_dicom` (the `ibis segment-dicom` handler) is not imported
here: it pulls in the agent and its tools, which plain readers do not need.
highdicom is imported only when a SEG is written or read.
"""

from .codes import SegmentCode, UnknownLabelWarning, code_for_label, known_labels
from .seg_writer import (
    SegmentInfo,
    SegWriteError,
    WrittenSeg,
    list_segments,
    read_segmentation,
    segment_mask,
    write_segmentation,
)
from .series import (
    DicomSeries,
    DicomSeriesError,
    DicomSeriesWarning,
    SeriesGeometry,
    SeriesSummary,
    SkippedFile,
    list_series,
    read_series,
)

__all__ = ["DicomSeries", "DicomSeriesError", "DicomSeriesWarning", "SegWriteError", "SegmentCode", "SegmentInfo",
           "SeriesGeometry", "SeriesSummary", "SkippedFile", "UnknownLabelWarning", "WrittenSeg", "code_for_label",
           "known_labels", "list_segments", "list_series", "read_segmentation", "read_series", "segment_mask",
           "write_segmentation"]
