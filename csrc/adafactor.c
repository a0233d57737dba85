/*
 * adafactor.c -- torch.optim.Adafactor's step (fastopt/adafactor.h).
 *
 * Design note
 * -----------
 * Adafactor is not elementwise: its second moment of a matrix is factored into row and column
 * means of g^2, and its step size depends on two norms over the whole tensor (the parameter's
 * RMS, and the RMS of the unclipped update U, which clips it). So a step is a short sequence of
 * fused passes, per tensor: (1) one read of g and p that lerps the row means into row_var
 * (each row is one thread's), sums the column parts per thread in caller-owned scratch (then
 * lerps their sum into col_var) and sums p^2; (2) one read of g that sums U^2, U rebuilt from
 * the factors (V = r_i c_j / mean(r), never materialized); (3) one read of g and p that writes
 * p. A vector needs two (moment + both norms, then the update). Nothing is allocated: U is
 * recomputed in pass 3 rather than stored, and the scratch (threads x columns doubles) belongs
 * to the caller, who sizes it once.
 *
 * Work split: passes 2 and 3 (and pass 1 with fewer batch matrices than threads) split rows
 * (static shares, fo_share); pass 1 over at least as many batch matrices as threads gives each
 * thread whole matrices, so their column sums need no combining. Below `threshold` elements a
 * tensor runs on the caller's thread. The loops are written once for both element types
 * (fastopt/adafactor_loops.h, included per type) and compiled per instruction set where
 * kernels.c is (FO_CLONES); -ffp-contract=off (setup.py) keeps every instance's rounding
 * alike, and the lerp and the final update are explicit fmas, as torch's vector kernels do.
 */
#include <math.h>
#include <stdint.h>

#include "fastopt/adafactor.h"
#include "fastopt/parallel.h"   /* FO_PRAGMA, FO_CLONES, FO_REGION, fo_team_cap, fo_share */

#define FO_AF_T float
#define FO_AF_SFX f32
#define FO_AF_SQRT sqrtf
#define FO_AF_FMA fmaf
#include "fastopt/adafactor_loops.h"
#undef FO_AF_T
#undef FO_AF_SFX
#undef FO_AF_SQRT
#undef FO_AF_FMA

#define FO_AF_T double
#define FO_AF_SFX f64
#define FO_AF_SQRT sqrt
#define FO_AF_FMA fma
#include "fastopt/adafactor_loops.h"
#undef FO_AF_T
#undef FO_AF_SFX
#undef FO_AF_SQRT
#undef FO_AF_FMA
