//! Password hashing with Argon2id (PHC strings in the database).

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};

/// Hashes `password` into a PHC string with a random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

/// Whether `password` matches the PHC string `stored`. A malformed stored
/// hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_verify_and_differ() {
        let a = super::hash("s3cret").expect("hash");
        let b = super::hash("s3cret").expect("hash");
        assert_ne!(a, b, "salted");
        assert!(super::verify("s3cret", &a));
        assert!(!super::verify("wrong", &a));
        assert!(!super::verify("s3cret", "not a phc string"));
    }
}
