"""GroupedSettings: the base of a config made of frozen groups of settings (LoopConfig, AutolabelConfig).

Why: a config in groups reads well (`config.selection.budget`), but tests, benchmarks and callers
change a few settings at a time, and projects stored their configs flat before the groups. Written by
hand here, once for every such config: routing flat setting names to their group (`make`, `with_`;
an unknown name is a TypeError with the nearest name), the group type checks, and the nested / flat
layouts (`to_dict`, `flat`, `from_dict`, which reads both and a mix). A subclass is a frozen
dataclass whose fields are the groups and whose `GROUPS` maps each field to its group's class.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

__all__ = ["GroupedSettings"]

C = TypeVar("C", bound="GroupedSettings")


class GroupedSettings:
    GROUPS: ClassVar[dict[str, type]] = {}
    # every setting's flat name -> its group (the names are unique across the groups)
    GROUP_OF: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.GROUP_OF = {f.name: g for g, group in cls.GROUPS.items() for f in dataclasses.fields(group)}
        if len(cls.GROUP_OF) != sum(len(dataclasses.fields(group)) for group in cls.GROUPS.values()):
            raise TypeError(f"{cls.__name__}: a setting name is in two groups")

    def __post_init__(self) -> None:
        for name, group in self.GROUPS.items():
            if not isinstance(getattr(self, name), group):
                raise TypeError(f"{type(self).__name__}.{name} must be a {group.__name__}, "
                                f"got {type(getattr(self, name)).__name__}")

    @classmethod
    def _route(cls, settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Flat setting names -> {group: {name: value}}; an unknown name is a TypeError naming it."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in settings.items():
            group = cls.GROUP_OF.get(key)
            if group is None:
                near = difflib.get_close_matches(key, list(cls.GROUP_OF), n=1)
                raise TypeError(f"{cls.__name__} has no setting {key!r}"
                                + (f" (did you mean {near[0]!r}?)" if near else ""))
            out.setdefault(group, {})[key] = value
        return out

    @classmethod
    def make(cls: type[C], **settings: Any) -> C:
        """The defaults with a few settings changed, by flat name: `LoopConfig.make(strategy="random", steps=40)`."""
        return cls(**{g: cls.GROUPS[g](**kw) for g, kw in cls._route(settings).items()})  # type: ignore[call-arg]

    def with_(self: C, **settings: Any) -> C:
        """This config with a few settings changed, by flat name (checked again, as when made)."""
        return dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **kw)  # type: ignore[type-var]
                                            for g, kw in self._route(settings).items()})

    def to_dict(self) -> dict[str, Any]:
        """{group: {setting: value}}, as stored."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def flat(self) -> dict[str, Any]:
        """{setting: value} in the flat layout (and order) of the configs stored before the groups."""
        return {k: v for group in self.to_dict().values() for k, v in group.items()}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """A stored config: nested ({group: {setting: value}}, as `to_dict` writes) or flat (as stored
        before the groups), or a mix. Unknown keys are ignored; missing settings take their defaults."""
        settings: dict[str, Any] = {}
        for key, value in d.items():
            if key in cls.GROUPS and isinstance(value, Mapping):
                settings.update({k: v for k, v in value.items() if cls.GROUP_OF.get(k) == key})
            elif key in cls.GROUP_OF:
                settings[key] = value
        return cls.make(**settings)
