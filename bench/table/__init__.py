"""Latency tables: from the store's measurements to a device's lookup table and the latency predictor built on it
(the third and fourth stages of profile -> store -> table -> predictor -> search).

    candidates  every entry a space's subnets use, per resolution, in the official key format (what to measure)
    model       EntryStats (one cell), LatencyTable (a device's table), LutError
    files       official YAML/JSON folders, CSV and Parquet: read, checked, written
    spaces      the space a table's keys belong to
    anchors     the published tables shipped beside the repository (Note10)
    build       store -> table (load_device_table), import into and export from the store
    exchange    a device's table out to files and back in (`lut export|import`), with the commands' reports
    lookup      a device's table for a command: its stored name, its space (device_space), its table
    predictor   LatencyPredictor: table sums -> whole-subnet latency through a fitted Calibration
"""
from bench.table.anchors import KNOWN_ANCHORS, anchor_table, anchors_missing
from bench.table.build import (export_table, import_table, load_device_table, read_table, subnet_stats,
                               table_from_store)
from bench.table.candidates import Entry, candidates, keys_by_resolution, subnet_entries, subnet_keys
from bench.table.exchange import TABLE_FORMATS, check_table_format, export_device_table, import_device_table
from bench.table.lookup import device_batch, device_space, device_table, table_batches
from bench.table.model import EntryStats, LatencyTable, LutError
from bench.table.predictor import Calibration, LatencyPredictor
from bench.table.spaces import detect_space

__all__ = ["KNOWN_ANCHORS", "anchor_table", "anchors_missing", "export_table", "import_table", "load_device_table",
           "read_table", "subnet_stats", "table_from_store", "TABLE_FORMATS", "check_table_format",
           "export_device_table", "import_device_table", "Entry", "candidates", "keys_by_resolution",
           "subnet_entries", "subnet_keys", "device_batch", "device_space", "device_table", "table_batches",
           "EntryStats", "LatencyTable", "LutError",
           "Calibration", "LatencyPredictor", "detect_space"]
