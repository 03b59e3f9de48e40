"""One module per post-processing step; importing the package registers them all in
:data:`vreid.postprocess.registry.STEPS`, in the order they are listed here."""

from vreid.postprocess.steps import (  # noqa: F401
    camera_bias,
    tracklet,
    query_grouping,
    query_expansion,
    aqe,
    rerank,
    bias_fusion,
    attribute_constraint,
    camera_verification,
    temporal_filter,
    group_rerank,
)
