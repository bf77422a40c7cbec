//! Seeded randomness for synthetic load: the token-count distributions of `--prompt-tokens` and
//! `--output-tokens` (`fixed:N`, `uniform:A-B`, `lognormal:MEAN,SIGMA`) and Poisson arrivals.
//!
//! Pure: a seed in, numbers out; no clock and no I/O, so a spec and a seed give the same plan on
//! every run. The generator is SplitMix64 ([`crate::sim::text::mix`]), the mock's own.

use crate::sim::text::mix;

/// A distribution of token counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    /// Always `N`.
    Fixed(u32),
    /// Uniform over the integers `A..=B`.
    Uniform(u32, u32),
    /// Log-normal with the given mean (of the counts, not of their logarithm) and sigma (of the
    /// logarithm), rounded, at least 1.
    LogNormal {
        /// Mean of the distribution.
        mean: f64,
        /// Standard deviation of ln(count).
        sigma: f64,
    },
}

/// Why a distribution spec was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad distribution {spec:?}: {why} (expected fixed:N, uniform:A-B or lognormal:MEAN,SIGMA)")]
pub struct DistError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl std::str::FromStr for Dist {
    type Err = DistError;

    fn from_str(spec: &str) -> Result<Dist, DistError> {
        let err = |why| DistError {
            spec: spec.to_string(),
            why,
        };
        let (kind, args) = spec.split_once(':').ok_or(err("no `:`"))?;
        let count = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| err("not a token count"))
        };
        match kind.trim() {
            "fixed" => {
                let n = count(args)?;
                if n == 0 {
                    return Err(err("the count must be at least 1"));
                }
                Ok(Dist::Fixed(n))
            }
            "uniform" => {
                let (a, b) = args.split_once('-').ok_or(err("uniform needs A-B"))?;
                let (a, b) = (count(a)?, count(b)?);
                if a == 0 || a > b {
                    return Err(err("uniform needs 1 <= A <= B"));
                }
                Ok(Dist::Uniform(a, b))
            }
            "lognormal" => {
                let (m, s) = args
                    .split_once(',')
                    .ok_or(err("lognormal needs MEAN,SIGMA"))?;
                let num = |s: &str| s.trim().parse::<f64>().map_err(|_| err("not a number"));
                let (mean, sigma) = (num(m)?, num(s)?);
                if !(mean.is_finite()
                    && mean >= 1.0
                    && sigma.is_finite()
                    && (0.0..=4.0).contains(&sigma))
                {
                    return Err(err("lognormal needs MEAN >= 1 and 0 <= SIGMA <= 4"));
                }
                Ok(Dist::LogNormal { mean, sigma })
            }
            _ => Err(err("unknown kind")),
        }
    }
}

/// A seeded SplitMix64 stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A stream from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]: ln is finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given rate (the gap between Poisson arrivals).
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }
}

impl Dist {
    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> u32 {
        match *self {
            Dist::Fixed(n) => n,
            Dist::Uniform(a, b) => a + (rng.next_u64() % (u64::from(b - a) + 1)) as u32,
            Dist::LogNormal { mean, sigma } => {
                // E[exp(mu + sigma N)] = exp(mu + sigma^2 / 2) = mean.
                let mu = mean.ln() - sigma * sigma / 2.0;
                let x = (mu + sigma * rng.normal()).exp().round();
                x.clamp(1.0, f64::from(u32::MAX)) as u32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        assert_eq!("fixed:128".parse(), Ok(Dist::Fixed(128)));
        assert_eq!("uniform:10-20".parse(), Ok(Dist::Uniform(10, 20)));
        assert_eq!(
            "lognormal:200,0.5".parse(),
            Ok(Dist::LogNormal {
                mean: 200.0,
                sigma: 0.5
            })
        );
    }

    #[test]
    fn refuses_bad_specs_with_the_spec_named() {
        for bad in [
            "",
            "fixed",
            "fixed:",
            "fixed:0",
            "fixed:-3",
            "fixed:x",
            "uniform:5",
            "uniform:9-3",
            "uniform:0-3",
            "lognormal:100",
            "lognormal:0.5,1",
            "lognormal:100,nan",
            "lognormal:100,9",
            "poisson:3",
        ] {
            let e = bad.parse::<Dist>().expect_err(bad);
            assert_eq!(e.spec, bad);
            assert!(e.to_string().contains("expected fixed:N"), "{e}");
        }
    }

    #[test]
    fn draws_are_seeded_and_in_range() {
        let u = Dist::Uniform(10, 20);
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u32> = (0..500).map(|_| u.sample(&mut a)).collect();
        let ys: Vec<u32> = (0..500).map(|_| u.sample(&mut b)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (10..=20).contains(x)));
        assert!(xs.contains(&10) && xs.contains(&20));
        assert_eq!(Dist::Fixed(5).sample(&mut a), 5);
    }

    #[test]
    fn lognormal_mean_and_exponential_rate_are_about_right() {
        let d = Dist::LogNormal {
            mean: 200.0,
            sigma: 0.5,
        };
        let mut rng = Rng::new(1);
        let n = 20_000;
        let mean = (0..n).map(|_| f64::from(d.sample(&mut rng))).sum::<f64>() / f64::from(n);
        assert!((mean - 200.0).abs() < 6.0, "{mean}");
        let gaps = (0..n).map(|_| rng.exponential(4.0)).sum::<f64>() / f64::from(n);
        assert!((gaps - 0.25).abs() < 0.01, "{gaps}");
    }
}
