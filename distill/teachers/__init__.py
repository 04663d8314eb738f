"""Teachers: one frozen model or an ensemble behind one interface (`Teacher`), their settings
(`TeacherSpec`), their checkpoints, the cache of trained teachers, provisioning, and the cache
of their outputs."""

from distill.teachers.base import Teacher, TeacherStep
from distill.teachers.cache import (
    CACHE_FORMAT,
    CachedTeacher,
    TeacherCache,
    cache_key,
    data_fingerprint,
    teacher_cache_key,
    teacher_key_material,
)
from distill.teachers.checkpoint import load_state_dict_file, load_weights
from distill.teachers.ensemble import RULES, TeacherEnsemble, ensemble_weights
from distill.teachers.frozen import FrozenTeacher, as_teacher
from distill.teachers.missing import (
    WHEN_MISSING,
    MissingTeacherError,
    resolve_when_missing,
    when_missing_of,
)
from distill.teachers.outputs import TeacherOutputs, cached_teacher_outputs, weights_digest
from distill.teachers.prepare import prepare_teachers
from distill.teachers.provision import (
    build_teachers,
    provide_teacher,
    provide_teachers,
    require_cached,
)
from distill.teachers.spec import TeacherSpec, ensemble_rule, teacher_specs
from distill.teachers.training import (
    TrainerFactory,
    teacher_compute,
    teacher_trainer_factory,
    train_teacher,
)

__all__ = [
    "CACHE_FORMAT",
    "RULES",
    "WHEN_MISSING",
    "CachedTeacher",
    "FrozenTeacher",
    "MissingTeacherError",
    "Teacher",
    "TeacherCache",
    "TeacherEnsemble",
    "TeacherOutputs",
    "TeacherSpec",
    "TeacherStep",
    "TrainerFactory",
    "as_teacher",
    "build_teachers",
    "cache_key",
    "cached_teacher_outputs",
    "data_fingerprint",
    "ensemble_rule",
    "ensemble_weights",
    "load_state_dict_file",
    "load_weights",
    "prepare_teachers",
    "provide_teacher",
    "provide_teachers",
    "require_cached",
    "resolve_when_missing",
    "teacher_cache_key",
    "teacher_compute",
    "teacher_key_material",
    "teacher_specs",
    "teacher_trainer_factory",
    "train_teacher",
    "weights_digest",
    "when_missing_of",
]
