//! The `TpmActivator` port (dps-core) on this module: the checks and blobs above, base64 in and
//! out, errors as text safe for the device.

use dps_core::ports::{TpmActivator, TpmChallenge, TpmKeyError};

use super::{activation_blob, challenge, IdentityKey, TpmError, TpmRsaKey};

/// TPM activation with OpenSSL's crypto.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpensslTpm;

fn port_error(e: TpmError) -> TpmKeyError {
    match e {
        TpmError::Crypto(_) => TpmKeyError::Failed(e.to_string()),
        other => TpmKeyError::Unsupported(other.to_string()),
    }
}

fn keys(ek: &str, srk: &str) -> Result<(TpmRsaKey, TpmRsaKey), TpmKeyError> {
    let ek = TpmRsaKey::endorsement_key_base64(ek).map_err(port_error)?;
    let srk = TpmRsaKey::storage_root_key_base64(srk).map_err(port_error)?;
    Ok((ek, srk))
}

impl TpmActivator for OpensslTpm {
    fn check_endorsement_key(&self, ek: &str) -> Result<(), TpmKeyError> {
        TpmRsaKey::endorsement_key_base64(ek).map(drop).map_err(port_error)
    }

    fn check_storage_root_key(&self, srk: &str) -> Result<(), TpmKeyError> {
        TpmRsaKey::storage_root_key_base64(srk).map(drop).map_err(port_error)
    }

    fn same_endorsement_key(&self, enrolled: &str, presented: &str) -> bool {
        match (TpmRsaKey::endorsement_key_base64(enrolled), TpmRsaKey::endorsement_key_base64(presented)) {
            (Ok(a), Ok(b)) => a.same_key(&b),
            _ => false,
        }
    }

    fn challenge(&self, ek: &str, srk: &str) -> Result<TpmChallenge, TpmKeyError> {
        let (ek, srk) = keys(ek, srk)?;
        let c = challenge(&ek, &srk).map_err(port_error)?;
        Ok(TpmChallenge { authentication_key: c.blob_base64(), issued_key: c.key.to_base64().to_string() })
    }

    fn wrap_key(&self, ek: &str, srk: &str, key: &str) -> Result<String, TpmKeyError> {
        let (ek, srk) = keys(ek, srk)?;
        let key = IdentityKey::from_base64(key).map_err(|e| TpmKeyError::Failed(e.to_string()))?;
        activation_blob(&ek, &srk, &key).map(|b| dps_core::base64::encode(&b)).map_err(port_error)
    }
}
