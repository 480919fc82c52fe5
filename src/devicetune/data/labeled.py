"""`LabeledData`: examples, labels and the user each example belongs to, in time order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LabeledData:
    """Examples with labels and their users, rows in the order they were recorded.

    Attributes:
        x: examples, shape ``(n, *example_shape)``, float32.
        y: class index per example, int64.
        user: user id per example (subject, speaker or synthetic device), int64.
        class_names: one name per class index.
        split: the dataset's official split per example (0 train, 1 test), if it has one.
    """

    x: np.ndarray
    y: np.ndarray
    user: np.ndarray
    class_names: tuple[str, ...]
    split: np.ndarray | None = None
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.x)
        if len(self.y) != n or len(self.user) != n:
            raise ValueError(f"x, y and user must have the same length, got "
                             f"{n}, {len(self.y)}, {len(self.user)}")
        if self.split is not None and len(self.split) != n:
            raise ValueError(f"split has length {len(self.split)}, expected {n}")

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, user: np.ndarray,
                    time: np.ndarray | None = None,
                    class_names: Sequence[str] | None = None) -> LabeledData:
        """A team's own arrays, checked and put in time order.

        Args:
            x: features, one row per example, ``(n, ...)``, numbers.
            y: labels: class indices ``0..C-1`` or class names (text).
            user: the person each row came from (integers or text).
            time: when each row was recorded (numbers or ISO dates); rows are ordered by
                it within each user. Default: the order given.
            class_names: the classes in model order (text labels are mapped onto them;
                default: sorted label names, or ``"0".."C-1"`` for indices).

        Raises:
            DataError: lengths differ, a value is missing or not finite, a label is not
                one of the classes, or there is only one class.
        """
        from devicetune.data.arrays import labeled_from_arrays

        return labeled_from_arrays(x, y, user, time=time, class_names=class_names)

    def user_name(self, user_id: int) -> str:
        """The id a user had in the data (text ids are numbered; this gives them back)."""
        names = self.meta.get("user_names")
        if isinstance(names, list) and 0 <= user_id < len(names):
            return str(names[user_id])
        return str(user_id)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def users(self) -> list[int]:
        """User ids present, ascending."""
        return [int(u) for u in np.unique(self.user)]

    def select(self, mask_or_index: np.ndarray) -> LabeledData:
        """The rows chosen by a boolean mask or an index array, order kept."""
        return LabeledData(
            x=self.x[mask_or_index],
            y=self.y[mask_or_index],
            user=self.user[mask_or_index],
            class_names=self.class_names,
            split=None if self.split is None else self.split[mask_or_index],
            meta=self.meta,
        )

    def for_users(self, users: list[int] | np.ndarray) -> LabeledData:
        """The rows of the given users, order kept."""
        return self.select(np.isin(self.user, np.asarray(users)))

    def label_counts(self) -> np.ndarray:
        """Examples per class, length ``num_classes``."""
        return np.bincount(self.y, minlength=self.num_classes)
