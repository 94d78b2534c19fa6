//! The builders' setters, written once: [`setters`].

/// Builder setters: each `name(value: Type) => field.path = stored;` becomes
/// `pub fn name(mut self, value: Type) -> Self`, which sets `self.field.path`
/// to `stored` (an expression of `value`) and returns `self`; the docs written
/// above it are the method's.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($value:ident: $type:ty) => $($field:ident).+ = $stored:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $value: $type) -> Self {
                self.$($field).+ = $stored;
                self
            }
        )*
    };
}
pub(crate) use setters;
