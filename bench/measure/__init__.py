"""The one measuring protocol every writer of measurements goes through (profile, validate, nightly, confirm,
the farm worker): settings, the reference block and normalisation, sample statistics, noise handling.

    settings   MeasureSettings, agent_profile (the device profile with a pass's overrides)
    reference  the reference block, the device's current speed, ReferenceWatch
    stats      sample statistics, the precision of a median, when a measurement is settled
    protocol   measure_models (models beside the reference, re-measured until settled), to_record, commit
    keys       the metadata keys a record carries from measuring to the tables, declared once (`keys.REGISTRY`)
"""
from bench.measure.protocol import (PROTOCOL_RAW, PROTOCOL_REFERENCE, Timed, commit, measure_models,
                                    reference_records, to_record)
from bench.measure.reference import (REFERENCE_PREFIX, REFERENCE_WINDOW, ReferenceWatch, current_reference_ms,
                                     reference_entry, reference_key, reference_nominal_ms, row_value)
from bench.measure.settings import MeasureSettings, ProfileError, agent_profile, check_batch_sizes
from bench.measure.stats import (DEFAULT_STATISTIC, SPREAD_FLOOR_MS, STATISTICS, StatisticError, is_settled,
                                 median_rel_se, sample_statistic, sample_stats, spread_ms)

__all__ = ["check_batch_sizes", "PROTOCOL_RAW", "PROTOCOL_REFERENCE", "Timed", "commit", "measure_models", "reference_records",
           "to_record", "REFERENCE_PREFIX", "REFERENCE_WINDOW", "ReferenceWatch", "current_reference_ms",
           "reference_entry", "reference_key", "reference_nominal_ms", "row_value", "MeasureSettings",
           "ProfileError", "agent_profile", "DEFAULT_STATISTIC", "SPREAD_FLOOR_MS", "STATISTICS", "StatisticError",
           "is_settled", "median_rel_se", "sample_statistic", "sample_stats", "spread_ms"]
