"""The supernet core: search spaces, the elastic OFA-MobileNetV3, cost, training, accuracy prediction, search."""
from ofa_core.errors import CheckpointError, InvalidConfigError, OFABenchError, UnknownSpaceError
from ofa_core.space import BlockSpec, ConfigBatch, SearchSpace, StageSpec, SubnetConfig, make_divisible


def __getattr__(name):  # the supernet pulls in torch: import it lazily
    if name == "OFAMobileNetV3":
        from ofa_core.supernet import OFAMobileNetV3

        return OFAMobileNetV3
    raise AttributeError(name)


__all__ = [
    "BlockSpec", "CheckpointError", "ConfigBatch", "InvalidConfigError", "OFABenchError", "OFAMobileNetV3",
    "SearchSpace", "StageSpec", "SubnetConfig", "UnknownSpaceError", "make_divisible",
]
