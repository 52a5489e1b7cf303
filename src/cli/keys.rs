//! `genkey` and `pubkey`, like `wg genkey | wg pubkey`.

use std::io::{Read, Write};

use anyhow::{Context, Result};

use concentrator::proto::keys::StaticSecret;
use concentrator::proto::rng::OsRandom;

/// Prints a new private key (base64) on stdout.
pub fn genkey() -> Result<()> {
    let secret = StaticSecret::generate(&mut OsRandom);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", secret.to_base64().as_str()).context("writing the key to stdout")?;
    Ok(())
}

/// Reads a private key on stdin and prints its public key.
pub fn pubkey() -> Result<()> {
    let mut text = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading a private key from stdin")?;
    let secret = StaticSecret::from_base64(&text).context(
        "stdin does not hold a private key (expected the output of `concentrator genkey`)",
    )?;
    println!("{}", secret.public_key());
    Ok(())
}
