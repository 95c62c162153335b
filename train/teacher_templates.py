"""The teacher's privileged prompt templates, by name (no torch import: config validation and
`spanroute train --help` read the names)."""

# Privileged blocks appended to the student's question. `{reference}`, `{error_type}` and `{skill}`
# come from the rollout's columns of the same names. Kept short: the teacher must still answer as
# the student would, only better informed.
TEACHER_TEMPLATES: dict[str, str] = {
    "reference": "Here is a correct reference solution. Use it to guide your answer:\n{reference}",
    "error_type": "A previous attempt failed with this kind of mistake: {error_type}. Avoid it.",
    "reference+error": (
        "Here is a correct reference solution. Use it to guide your answer:\n{reference}\n"
        "A previous attempt failed with this kind of mistake: {error_type}. Avoid it."
    ),
    "skill": "Advice distilled from earlier attempts at similar problems:\n{skill}",
}
