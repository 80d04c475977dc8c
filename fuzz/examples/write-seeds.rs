//! Writes each fuzz target's seeds into `DIR/<target>/` (the corpus cargo-fuzz starts from).
//! `scripts/fuzz` runs it before fuzzing.

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".to_owned());
    for (name, _) in mesh_fuzz::TARGETS {
        let target = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&target)?;
        for (i, seed) in mesh_fuzz::seeds(name).iter().enumerate() {
            std::fs::write(target.join(format!("seed-{i:02}")), seed)?;
        }
    }
    Ok(())
}
