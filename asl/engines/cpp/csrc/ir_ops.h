// Generated from asl/engines/ir.py by `python -m asl.engines.ir asl/engines/cpp/csrc/ir_ops.h`;
// do not edit (tests/test_ir.py checks that it is up to date).
#pragma once
#include <cstdint>

enum OpCode : int64_t { OP_P = 0, OP_G = 1, OP_M = 2, OP_X = 3, OP_CONST = 4, OP_CURVE = 5, OP_MUL = 6, OP_ADD = 7, OP_SUB = 8, OP_ONE_MINUS = 9, OP_POOL = 10, OP_STAGE_IN = 11 };
enum PoolCode : int64_t { POOL_MAX = 0, POOL_MIN = 1 };
enum ModeCode : int64_t { MODE_STATS = 0, MODE_MAP = 1 };
