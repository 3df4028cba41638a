//! Who may act on a project: the one rule every call that names a project applies, kept apart
//! so the modules that charge and the one that records paths both use it without importing each
//! other.

use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

/// `NOT_FOUND` when the project has no row, `FORBIDDEN` when another user owns it.
pub fn check_owner(owner: Option<String>, user: &UserId, project: &ProjectId) -> Result<()> {
  match owner {
    None => Err(QuotaError::NotFound(format!(
      "project {project} does not exist"
    ))),
    Some(owner) if owner != user.as_str() => Err(QuotaError::Forbidden(format!(
      "project {project} belongs to another user"
    ))),
    Some(_) => Ok(()),
  }
}
