//! Prints the `Coolpy7Cluster` CustomResourceDefinition as YAML:
//! `cargo run -p coolpy7-operator --bin crdgen > manifests/crd.yaml`.

fn main() -> anyhow::Result<()> {
    print!("{}", coolpy7_operator::crd::crd_yaml()?);
    Ok(())
}
