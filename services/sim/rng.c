// Seeded random numbers: splitmix64 to seed, xoshiro256** to draw, then the distributions.
#include "rng.h"
#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

void sim_rng_seed(sim_rng *r, uint64_t seed, uint64_t stream)
{
	// The stream is mixed in before expansion so that seeds s and s+1 of neighbouring
	// streams do not share states.
	uint64_t x = seed ^ (stream * 0xd1342543de82ef95ULL + 0x2545f4914f6cdd1dULL);

	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

uint64_t sim_rng_next(sim_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

double sim_rng_uniform(sim_rng *r)
{
	return (double)(sim_rng_next(r) >> 11) * 0x1.0p-53;
}

double sim_rng_exp(sim_rng *r, double mean)
{
	if (mean <= 0)
		return 0;
	// 1 - u lies in (0, 1]: the log is finite.
	return -mean * log(1.0 - sim_rng_uniform(r));
}

double sim_rng_normal(sim_rng *r)
{
	double u1 = 1.0 - sim_rng_uniform(r), u2 = sim_rng_uniform(r);

	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

double sim_rng_lognormal(sim_rng *r, double mean, double sigma)
{
	if (mean <= 0)
		return 0;
	// E[exp(mu + sigma Z)] = exp(mu + sigma^2 / 2): choose mu so the mean is the one asked.
	double mu = log(mean) - sigma * sigma / 2.0;

	return exp(mu + sigma * sim_rng_normal(r));
}
