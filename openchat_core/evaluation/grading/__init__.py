"""MATH answer grading, ported from OpenChat (which took it from OpenAI's PRM800K and Hendrycks' MATH).

`math_normalize` is the MATH-paper string normalisation; `math_grader.grade_answer` adds
PRM800K's more lenient normalisation and a sympy equivalence check. See each module's header
for where it comes from and its licence.
"""
