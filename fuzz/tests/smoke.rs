//! The fuzz targets' smoke form: each runs on its seeds and on mutations of them for a short,
//! fixed number of rounds with a fixed random seed, so the suite catches a target that
//! panics on its own starting points. The long coverage-guided runs are `scripts/fuzz`.

const ROUNDS: usize = 20_000;

/// Mutates `input` as a fuzzer would: flips, deletions, insertions of bytes and of
/// interesting tokens.
fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"/",
        b"\\",
        b".",
        b"..",
        b"%2e",
        b"%2E",
        b"%2f",
        b"%5c",
        b";",
        b"%",
        b"%%",
        b"%00",
        b"\xff",
        b"\x80",
        b"*",
        b"?",
        b"#",
        b"\x16\x03\x01",
    ];
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(0..=out.len());
        match rng.u8(0..4) {
            0 if !out.is_empty() => {
                let i = rng.usize(0..out.len());
                out[i] ^= 1 << rng.u8(0..8);
            }
            1 if !out.is_empty() => {
                out.remove(rng.usize(0..out.len()));
            }
            2 => out.insert(at, rng.u8(..)),
            _ => {
                let t = TOKENS[rng.usize(0..TOKENS.len())];
                out.splice(at..at, t.iter().copied());
            }
        }
    }
    out
}

#[test]
fn every_target_survives_its_seeds_and_their_mutations() {
    for (name, target) in mesh_fuzz::TARGETS {
        let seeds = mesh_fuzz::seeds(name);
        assert!(!seeds.is_empty(), "{name} has seeds");
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for seed in &seeds {
            target(seed);
        }
        for _ in 0..ROUNDS {
            let seed = &seeds[rng.usize(0..seeds.len())];
            target(&mutate(&mut rng, seed));
        }
    }
}
