"""Exercises of lesson 03 on the CUDA C++ kernels: graders, solutions and mutants."""
