"""Exercises of lesson 04 on the CUDA C++ backward: graders, solutions and mutants."""
