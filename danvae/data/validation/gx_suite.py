"""The Great Expectations 1.x suite over the manifest: the schema it expects and the one
in-memory context that runs it (created once per process; GX is imported on first use).
"""
from __future__ import annotations

import threading
from typing import Any

import pandas as pd

from danvae.data.manifest import LABELS, MANIFEST_COLUMNS, MANIFEST_DTYPES, SPLITS
from danvae.data.nuisance import INFO_COLUMN

CHANNELS = (1, 2, 3, 4)
# The manifest's schema (danvae.data.manifest). The info column is not required: a manifest
# written before it existed is read with info "" (load_manifest).
REQUIRED_COLUMNS = tuple(c for c in MANIFEST_COLUMNS if c != INFO_COLUMN)
STRING_COLUMNS = tuple(c for c in REQUIRED_COLUMNS if c not in MANIFEST_DTYPES)
INT_COLUMNS = tuple(c for c, t in MANIFEST_DTYPES.items() if t == "int64")
FLOAT_COLUMNS = tuple(c for c, t in MANIFEST_DTYPES.items() if t == "float64")
BOOL_COLUMNS = tuple(c for c, t in MANIFEST_DTYPES.items() if t == "bool")

# dtype names as GX's pandas type check resolves them (numpy names, pandas extension dtype classes).
# String columns use ExpectColumnValuesToBeOfType(type_="str") instead: it accepts pandas 3's default
# ``str`` dtype, ``string[python]``/``string[pyarrow]`` and object columns holding str, whereas a type
# list cannot name the ``str`` dtype (StringDtype with NaN as missing value) in a way GX matches.
INT_TYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype", "UInt8Dtype", "UInt16Dtype", "UInt32Dtype", "UInt64Dtype",
]
FLOAT_TYPES = ["float16", "float32", "float64", "Float32Dtype", "Float64Dtype"]
BOOL_TYPES = ["bool", "BooleanDtype"]

MAX_EXAMPLES = 5
_SHA256_HEX = r"^[0-9a-f]{64}$"
_ISO_UTC = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}"


# ---- the Great Expectations context (one per process, in memory) --------------------------------


class _GXRunner:
    """The ephemeral context, its pandas data source and batch definition, and suites by shape."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.expectations.metadata_types import FailureSeverity
        from great_expectations.expectations.row_conditions import Column

        self.gx = gx
        self.severity = FailureSeverity
        self.Column = Column
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self.context.data_sources.add_pandas("danvae_manifest").add_dataframe_asset("manifest")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole_manifest")
        self._definitions: dict[tuple, Any] = {}
        self.lock = threading.Lock()

    def definition(self, present: tuple[str, ...], with_image_size: bool) -> Any:
        """The validation definition for a manifest with these required columns present."""
        key = (present, with_image_size)
        if key not in self._definitions:
            gx = self.gx
            name = f"danvae_manifest_{len(self._definitions)}"
            suite = self.context.suites.add(gx.ExpectationSuite(name=name))
            for expectation in self._expectations(set(present), with_image_size):
                suite.add_expectation(expectation)
            self._definitions[key] = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=self.batch_definition, suite=suite)
            )
        return self._definitions[key]

    def _expectations(self, present: set[str], with_image_size: bool) -> list:
        """The suite. Column expectations only for present columns (absent ones fail the column-set check)."""
        E = self.gx.expectations
        CRIT, WARN = self.severity.CRITICAL, self.severity.WARNING
        Col = self.Column
        out: list = [E.ExpectTableRowCountToBeBetween(min_value=1, severity=CRIT, meta={"category": "counts"})]
        out.append(E.ExpectTableColumnsToMatchSet(
            column_set=list(REQUIRED_COLUMNS), exact_match=False, severity=CRIT, meta={"category": "schema"},
        ))

        def add(col_needed: tuple[str, ...], exp_cls: type, category: str, severity: Any = CRIT, **kwargs: Any) -> None:
            if all(c in present for c in col_needed):
                out.append(exp_cls(severity=severity, meta={"category": category}, **kwargs))

        for col in STRING_COLUMNS:
            add((col,), E.ExpectColumnValuesToBeOfType, "types", column=col, type_="str")
        for col in INT_COLUMNS:
            add((col,), E.ExpectColumnValuesToBeInTypeList, "types", column=col, type_list=INT_TYPES)
        for col in FLOAT_COLUMNS:
            add((col,), E.ExpectColumnValuesToBeInTypeList, "types", column=col, type_list=FLOAT_TYPES)
        for col in BOOL_COLUMNS:
            add((col,), E.ExpectColumnValuesToBeInTypeList, "types", column=col, type_list=BOOL_TYPES)
        for col in REQUIRED_COLUMNS:
            add((col,), E.ExpectColumnValuesToNotBeNull, "nulls", column=col)

        add(("brightness",), E.ExpectColumnValuesToBeBetween, "ranges", column="brightness", min_value=0.0, max_value=1.0)
        for col in ("width", "height"):
            add((col,), E.ExpectColumnValuesToBeBetween, "ranges", column=col, min_value=1)
        add(("row",), E.ExpectColumnValuesToBeBetween, "ranges", column="row", min_value=0,
            max_value={"$PARAMETER": "row_max"})
        add(("channels",), E.ExpectColumnValuesToBeInSet, "sets", column="channels", value_set=list(CHANNELS))
        add(("label",), E.ExpectColumnValuesToBeInSet, "sets", column="label", value_set=list(LABELS))
        add(("split",), E.ExpectColumnValuesToBeInSet, "sets", column="split", value_set=list(SPLITS))
        add(("id",), E.ExpectColumnValuesToBeUnique, "uniqueness", column="id")
        add(("row",), E.ExpectColumnValuesToBeUnique, "uniqueness", column="row")
        add(("id",), E.ExpectColumnValuesToMatchRegex, "format", column="id", regex=_SHA256_HEX)
        for col in ("path", "stored_path"):
            add((col,), E.ExpectColumnValueLengthsToBeBetween, "format", column=col, min_value=1)

        # warnings: consistency and cosmetics
        add(("ingested_at",), E.ExpectColumnValuesToMatchRegex, "format", WARN, column="ingested_at", regex=_ISO_UTC)
        add(("batch",), E.ExpectColumnValueLengthsToBeBetween, "format", WARN, column="batch", min_value=1)
        add(("source",), E.ExpectColumnValueLengthsToBeBetween, "format", WARN, column="source", min_value=1)
        add(("label", "defect"), E.ExpectColumnValuesToBeInSet, "consistency", WARN,
            column="defect", value_set=[""], row_condition=Col("label") == "normal")
        if with_image_size:
            for col in ("width", "height"):
                add(("resized", col), E.ExpectColumnValuesToBeBetween, "consistency", WARN,
                    column=col, min_value={"$PARAMETER": "image_size"}, max_value={"$PARAMETER": "image_size"},
                    row_condition=Col("resized") == False)  # noqa: E712 (a GX condition, not a comparison)
        return out

    def run(self, df: pd.DataFrame, present: tuple[str, ...], image_size: int | None) -> Any:
        with self.lock:
            definition = self.definition(present, image_size is not None)
            params: dict[str, Any] = {"row_max": max(len(df) - 1, 0)}
            if image_size is not None:
                params["image_size"] = int(image_size)
            return definition.run(
                batch_parameters={"dataframe": df},
                expectation_parameters=params,
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES},
            )


_RUNNER: _GXRunner | None = None
_RUNNER_LOCK = threading.Lock()


def gx_runner() -> _GXRunner:
    """The one place where Great Expectations is imported and its context created."""
    global _RUNNER
    with _RUNNER_LOCK:
        if _RUNNER is None:
            _RUNNER = _GXRunner()
        return _RUNNER
