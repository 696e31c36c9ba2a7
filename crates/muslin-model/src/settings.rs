//! `settings!`: a configuration written once, read from two places.
//!
//! Each setting is one entry, so the file struct and the command-line
//! flags cannot drift apart (a flag missing from a hand-kept overlay list
//! used to be dropped without a word):
//!
//! ```text
//! settings! {
//!     /// The file side.
//!     pub struct Config;
//!     /// The flag side.
//!     pub struct Flags;
//!
//!     /// Doc comment: the field's documentation and the flag's help.
//!     name: Option<String>;             // no default: unset
//!     /// ...
//!     port: u16 = 7331;                 // a value with its default
//!     /// ...
//!     #[arg(long = "peer", value_delimiter = ',')]
//!     peers: Vec<String>;               // a list: empty by default
//! }
//! ```
//!
//! It generates the file struct (serde, kebab-case keys, unknown keys
//! refused, `Default` from the listed defaults), a `clap::Args` struct whose
//! fields are all optional (`Option<T>`, or `Vec<T>` for lists) so a flag
//! that is not given is told apart from one given with the default value,
//! and `Flags::apply(&self, &mut Config)`. `#[arg(...)]` goes to the flag
//! only: a different flag name, a value name, a list delimiter.

#[macro_export]
macro_rules! settings {
    // Entry: the two struct names, then the settings, normalised one at a
    // time (`@munch`) into `{ [docs] [arg attrs] name [config type]
    // [flag type] default kind }` so one repetition can emit every part.
    (
        $(#[doc = $cdoc:tt])*
        $cvis:vis struct $config:ident;
        $(#[doc = $fdoc:tt])*
        $fvis:vis struct $flags:ident;
        $($rest:tt)*
    ) => {
        $crate::settings!(@munch
            [$([$cdoc])*] $cvis $config [$([$fdoc])*] $fvis $flags []
            $($rest)*
        );
    };

    (@munch $head:tt $cvis:vis $config:ident $fhead:tt $fvis:vis $flags:ident [$($acc:tt)*]
        $(#[doc = $doc:tt])* $(#[arg($($arg:tt)*)])?
        $name:ident : Option<$t:ty>;
        $($rest:tt)*
    ) => {
        $crate::settings!(@munch $head $cvis $config $fhead $fvis $flags [$($acc)*
            { [$($doc)*] [$($($arg)*)?] $name [Option<$t>] [Option<$t>] (None) maybe }
        ] $($rest)*);
    };

    (@munch $head:tt $cvis:vis $config:ident $fhead:tt $fvis:vis $flags:ident [$($acc:tt)*]
        $(#[doc = $doc:tt])* $(#[arg($($arg:tt)*)])?
        $name:ident : Vec<$t:ty>;
        $($rest:tt)*
    ) => {
        $crate::settings!(@munch $head $cvis $config $fhead $fvis $flags [$($acc)*
            { [$($doc)*] [$($($arg)*)?] $name [Vec<$t>] [Vec<$t>] (Vec::new()) list }
        ] $($rest)*);
    };

    (@munch $head:tt $cvis:vis $config:ident $fhead:tt $fvis:vis $flags:ident [$($acc:tt)*]
        $(#[doc = $doc:tt])* $(#[arg($($arg:tt)*)])?
        $name:ident : $t:ty = $default:expr;
        $($rest:tt)*
    ) => {
        $crate::settings!(@munch $head $cvis $config $fhead $fvis $flags [$($acc)*
            { [$($doc)*] [$($($arg)*)?] $name [$t] [Option<$t>] ($default) value }
        ] $($rest)*);
    };

    (@munch [$([$cdoc:tt])*] $cvis:vis $config:ident [$([$fdoc:tt])*] $fvis:vis $flags:ident [$(
        { [$($doc:tt)*] [$($arg:tt)*] $name:ident [$($cty:tt)*] [$($fty:tt)*] ($default:expr) $kind:ident }
    )*]) => {
        $(#[doc = $cdoc])*
        #[derive(Debug, Clone, PartialEq, Eq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        $cvis struct $config {
            $(
                $(#[doc = $doc])*
                pub $name: $($cty)*,
            )*
        }

        impl Default for $config {
            fn default() -> Self {
                $config { $($name: $default,)* }
            }
        }

        $(#[doc = $fdoc])*
        #[derive(Debug, Clone, Default, ::clap::Args)]
        #[command(mut_args = $crate::settings::show_default::<$config>)]
        $fvis struct $flags {
            $(
                $(#[doc = $doc])*
                #[arg(long, $($arg)*)]
                pub $name: $($fty)*,
            )*
        }

        impl $flags {
            /// Overlays the flags that were given; the rest keep `config`'s values.
            pub fn apply(&self, config: &mut $config) {
                $( $crate::settings!(@apply $kind self config $name); )*
            }
        }
    };

    (@apply maybe $flags:ident $config:ident $name:ident) => {
        if let Some(v) = &$flags.$name {
            $config.$name = Some(v.clone());
        }
    };
    (@apply value $flags:ident $config:ident $name:ident) => {
        if let Some(v) = &$flags.$name {
            $config.$name = v.clone();
        }
    };
    (@apply list $flags:ident $config:ident $name:ident) => {
        if !$flags.$name.is_empty() {
            $config.$name = $flags.$name.clone();
        }
    };
}

/// Appends `[default: VALUE]` to a flag's help, the value taken from the
/// config's `Default`: the flags carry no defaults of their own (an absent
/// flag must not override the file), yet the help should show them.
pub fn show_default<C: serde::Serialize + Default>(arg: clap::Arg) -> clap::Arg {
    let key = arg.get_id().as_str().replace('_', "-");
    let value = match serde_json::to_value(C::default()) {
        Ok(serde_json::Value::Object(mut m)) => m.remove(&key),
        _ => None,
    };
    let shown = match value {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
        _ => return arg,
    };
    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
    arg.help(format!("{help} [default: {shown}]"))
}
