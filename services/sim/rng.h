// Seeded random numbers for the simulator: one generator per stream, identical on every machine.
#ifndef SIM_RNG_H
#define SIM_RNG_H
#include <stdint.h>

// xoshiro256** state. Embedded; nothing to free.
typedef struct sim_rng {
	uint64_t s[4];
} sim_rng;

// Seeds r from (seed, stream): the same pair always gives the same sequence, and different
// streams of one seed are independent (the schedule, each agent, ...).
void sim_rng_seed(sim_rng *r, uint64_t seed, uint64_t stream);
uint64_t sim_rng_next(sim_rng *r);
// Uniform in [0, 1), 53 bits.
double sim_rng_uniform(sim_rng *r);
// Exponential with the given mean (> 0); 0 for mean <= 0.
double sim_rng_exp(sim_rng *r, double mean);
// Standard normal (Box-Muller; consumes exactly two uniforms, so streams stay aligned).
double sim_rng_normal(sim_rng *r);
// Log-normal with the given mean and shape sigma (the log's standard deviation).
double sim_rng_lognormal(sim_rng *r, double mean, double sigma);

#endif
