"""The one measuring protocol every writer of measurements goes through (profile, validate, nightly, confirm,
the farm worker): settings, the references (block and subnet) and normalisation, sample statistics, noise handling.

    settings   MeasureSettings, agent_profile (the device profile with a pass's overrides)
    reference  the reference block and subnet, the device's current speed, ReferenceWatch
    stats      sample statistics, the precision of a median, when a measurement is settled
    tracking   how much of the reference subnet's movement whole subnets share; a pass rescaled with it
    protocol   measure_models (models beside the reference, re-measured until settled), to_record, commit
    keys       the metadata keys a record carries from measuring to the tables, declared once (`keys.REGISTRY`)
"""
from bench.measure.protocol import (PROTOCOL_RAW, PROTOCOL_REFERENCE, PROTOCOL_SUBNET_REFERENCE, Timed, commit,
                                    measure_models, reference_records, to_record)
from bench.measure.reference import (REFERENCE_PREFIX, REFERENCE_WINDOW, SUBNET_REFERENCE_PREFIX, ReferenceWatch,
                                     current_reference_ms, reference_entry, reference_key, reference_nominal_ms,
                                     reference_subnet, row_value, subnet_reference_key, subnet_reference_nominal_ms)
from bench.measure.settings import MeasureSettings, ProfileError, agent_profile, check_batch_sizes
from bench.measure.stats import (DEFAULT_STATISTIC, SPREAD_FLOOR_MS, STATISTICS, StatisticError, is_settled,
                                 median_rel_se, sample_statistic, sample_stats, spread_ms)

__all__ = ["check_batch_sizes", "PROTOCOL_RAW", "PROTOCOL_REFERENCE", "PROTOCOL_SUBNET_REFERENCE", "Timed", "commit",
           "measure_models", "reference_records", "to_record", "REFERENCE_PREFIX", "REFERENCE_WINDOW", "ReferenceWatch", "current_reference_ms",
           "reference_entry", "reference_key", "reference_nominal_ms", "row_value", "SUBNET_REFERENCE_PREFIX",
           "reference_subnet", "subnet_reference_key", "subnet_reference_nominal_ms", "MeasureSettings",
           "ProfileError", "agent_profile", "DEFAULT_STATISTIC", "SPREAD_FLOOR_MS", "STATISTICS", "StatisticError",
           "is_settled", "median_rel_se", "sample_statistic", "sample_stats", "spread_ms"]
