"""ROS parameters declared from the core's pydantic models.

Each node's settings are one pydantic model in ``lidar_ssl_core`` (name, type, default, description,
validation). The node declares every field as a parameter with that description, reads the values the
launch file / YAML gave, and validates them through the model, so a wrong value fails at start-up with
the parameter's name, and a parameter cannot exist without a description.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter

M = TypeVar("M", bound=BaseModel)

_SCALARS: dict[type, int] = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ARRAYS: dict[type, tuple[int, Parameter.Type]] = {
    str: (ParameterType.PARAMETER_STRING_ARRAY, Parameter.Type.STRING_ARRAY),
    float: (ParameterType.PARAMETER_DOUBLE_ARRAY, Parameter.Type.DOUBLE_ARRAY),
    int: (ParameterType.PARAMETER_INTEGER_ARRAY, Parameter.Type.INTEGER_ARRAY),
}


def _ros_type(annotation: Any) -> tuple[int, Parameter.Type | None]:
    """(ParameterType, Parameter.Type for an empty array default) of a model field annotation."""
    origin = get_origin(annotation)
    if origin is Literal:
        return _SCALARS[type(get_args(annotation)[0])], None
    if origin in (list, tuple):
        return _ARRAYS[get_args(annotation)[0]]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"optional parameters are not supported ({annotation}); use a sentinel default")
    return _SCALARS[annotation], None


def parameter_names(model: type[BaseModel]) -> set[str]:
    """Names of the parameters a node declares for ``model`` (checked against launch and YAML files)."""
    return set(model.model_fields)


def declare_from_model(node: Node, model: type[M]) -> M:
    """Declare every field of ``model`` on ``node`` and return the validated values.

    Raises ValueError naming the parameters when the values given do not validate.
    """
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        ros_type, empty_type = _ros_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        descriptor = ParameterDescriptor(description=info.description or "", type=ros_type)
        param: Any
        if isinstance(default, list | tuple) and not default and empty_type is not None:
            param = node.declare_parameter(name, empty_type, descriptor)
        else:
            value = list(default) if isinstance(default, tuple) else default
            param = node.declare_parameter(name, value, descriptor)
        value = param.value
        values[name] = [] if value is None and empty_type is not None else value
    try:
        return model.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{node.get_name()}: invalid parameters: {problems}") from None
