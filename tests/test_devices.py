"""Out-of-memory errors become one clear ResourceError; other errors pass through."""

import pytest

from segstyle_core.devices import memory_guard
from segstyle_core.errors import ResourceError


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"),
    ],
)
def test_out_of_memory_becomes_a_resource_error(error: Exception) -> None:
    with pytest.raises(ResourceError) as info, memory_guard("big.png: stylizing 9000x6000"):
        raise error
    message = str(info.value)
    assert message.startswith("big.png: stylizing 9000x6000: out of memory")
    assert "smaller working height" in message and "device cpu" in message and "\n" not in message
    assert info.value.__cause__ is error


def test_other_errors_pass_through() -> None:
    with pytest.raises(RuntimeError, match="shape mismatch"), memory_guard("x"):
        raise RuntimeError("shape mismatch")
    with pytest.raises(KeyError), memory_guard("x"):
        raise KeyError("k")
