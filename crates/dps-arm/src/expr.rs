//! The ARM expression language: parsing the text between the outer `[` and `]` of a template
//! string into an [`Expr`].
//!
//! Grammar (whitespace allowed between tokens):
//!
//! ```text
//! expr    = primary { "." IDENT | "[" expr "]" }
//! primary = STRING | INTEGER | IDENT "(" [ expr { "," expr } ] ")"
//! STRING  = "'" { any character, "''" for a quote } "'"
//! INTEGER = [ "-" ] DIGIT { DIGIT }
//! ```
//!
//! `true`, `false` and `null` are functions (`true()`), not literals.

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Str(String),
    Int(i64),
    Call { name: String, args: Vec<Expr> },
    Prop { target: Box<Expr>, name: String },
    Index { target: Box<Expr>, index: Box<Expr> },
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(name) => format!("'{name}'"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Int(n) => format!("integer {n}"),
            Tok::LParen => "'('".to_owned(),
            Tok::RParen => "')'".to_owned(),
            Tok::LBracket => "'['".to_owned(),
            Tok::RBracket => "']'".to_owned(),
            Tok::Comma => "','".to_owned(),
            Tok::Dot => "'.'".to_owned(),
        }
    }
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    /// 1-based character position in the whole template string, the opening `[` being 1.
    pos: usize,
}

/// Deepest nesting of calls, properties and indexes accepted, to keep recursion bounded (the
/// parser's stack: about 4 KB a level in a debug build; evaluation has its own bound,
/// `Limits::nesting`).
const MAX_DEPTH: usize = 64;

/// Parses the inside of an expression string (without the outer brackets). Errors are messages
/// that give the character position within the template string (the opening `[` is character 1).
pub(crate) fn parse(src: &str) -> Result<Expr, String> {
    let tokens = lex(src)?;
    if tokens.is_empty() {
        return Err("the expression is empty".to_owned());
    }
    let mut parser = Parser { tokens, next: 0, depth: 0 };
    let expr = parser.expr()?;
    if let Some(extra) = parser.tokens.get(parser.next) {
        return Err(format!(
            "unexpected {} at character {} after the end of the expression",
            extra.tok.describe(),
            extra.pos
        ));
    }
    Ok(expr)
}

fn lex(src: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let pos = i + 2;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            ',' => Tok::Comma,
            '.' => Tok::Dot,
            '\'' => {
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("the string starting at character {pos} has no closing quote")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            text.push('\'');
                            i += 2;
                        }
                        Some('\'') => break,
                        Some(&other) => {
                            text.push(other);
                            i += 1;
                        }
                    }
                }
                Tok::Str(text)
            }
            c if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(char::is_ascii_digit) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n =
                    text.parse::<i64>().map_err(|_| format!("the integer {text} at character {pos} is too large"))?;
                tokens.push(Token { tok: Tok::Int(n), pos });
                continue;
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let start = i;
                while chars.get(i).is_some_and(|&c| c.is_alphanumeric() || c == '_' || c == '$') {
                    i += 1;
                }
                tokens.push(Token { tok: Tok::Ident(chars[start..i].iter().collect()), pos });
                continue;
            }
            other => return Err(format!("unexpected character '{other}' at character {pos}")),
        };
        tokens.push(Token { tok, pos });
        i += 1;
    }
    Ok(tokens)
}

#[derive(Debug)]
struct Parser {
    tokens: Vec<Token>,
    next: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.next).map(|t| &t.tok)
    }

    fn bump(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.next);
        if token.is_some() {
            self.next += 1;
        }
        token
    }

    fn unexpected(&self, expected: &str) -> String {
        match self.tokens.get(self.next) {
            Some(t) => format!("expected {expected} at character {}, found {}", t.pos, t.tok.describe()),
            None => format!("expected {expected}, but the expression ends"),
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("the expression nests more than {MAX_DEPTH} levels deep"));
        }
        let mut expr = self.primary()?;
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.next += 1;
                    match self.peek() {
                        Some(Tok::Ident(name)) => {
                            let name = name.clone();
                            self.next += 1;
                            expr = Expr::Prop { target: Box::new(expr), name };
                        }
                        _ => return Err(self.unexpected("a property name after '.'")),
                    }
                }
                Some(Tok::LBracket) => {
                    self.next += 1;
                    let index = self.expr()?;
                    if self.peek() != Some(&Tok::RBracket) {
                        return Err(self.unexpected("']'"));
                    }
                    self.next += 1;
                    expr = Expr::Index { target: Box::new(expr), index: Box::new(index) };
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Ok(expr)
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let Some(token) = self.bump() else {
            return Err("the expression ends where a value was expected".to_owned());
        };
        let pos = token.pos;
        match token.tok.clone() {
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Int(n) => Ok(Expr::Int(n)),
            Tok::Ident(name) => {
                if self.peek() != Some(&Tok::LParen) {
                    let lower = name.to_ascii_lowercase();
                    if matches!(lower.as_str(), "true" | "false" | "null") {
                        return Err(format!(
                            "'{name}' at character {pos} is not a literal in ARM expressions: write {lower}()"
                        ));
                    }
                    return Err(self.unexpected(&format!("'(' after the function name '{name}'")));
                }
                self.next += 1;
                let mut args = Vec::new();
                if self.peek() == Some(&Tok::RParen) {
                    self.next += 1;
                    return Ok(Expr::Call { name, args });
                }
                loop {
                    args.push(self.expr()?);
                    match self.peek() {
                        Some(Tok::Comma) => self.next += 1,
                        Some(Tok::RParen) => {
                            self.next += 1;
                            return Ok(Expr::Call { name, args });
                        }
                        _ => return Err(self.unexpected(&format!("',' or ')' in the arguments of '{name}'"))),
                    }
                }
            }
            other => Err(format!(
                "expected a function call, a string or an integer at character {pos}, found {}",
                other.describe()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Expr};

    fn call(name: &str, args: Vec<Expr>) -> Expr {
        Expr::Call { name: name.to_owned(), args }
    }

    fn s(text: &str) -> Expr {
        Expr::Str(text.to_owned())
    }

    #[test]
    fn calls_strings_and_integers() {
        assert_eq!(parse(" concat( 'it''s' , -12,'' ) "), Ok(call("concat", vec![s("it's"), Expr::Int(-12), s("")])));
        assert_eq!(parse("true()"), Ok(call("true", vec![])));
    }

    #[test]
    fn properties_and_indexes_chain() {
        assert_eq!(
            parse("variables('a')[0].b['c']"),
            Ok(Expr::Index {
                target: Box::new(Expr::Prop {
                    target: Box::new(Expr::Index {
                        target: Box::new(call("variables", vec![s("a")])),
                        index: Box::new(Expr::Int(0)),
                    }),
                    name: "b".to_owned(),
                }),
                index: Box::new(s("c")),
            })
        );
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(parse(""), Err("the expression is empty".to_owned()));
        assert_eq!(
            parse("concat('a'"),
            Err("expected ',' or ')' in the arguments of 'concat', but the expression ends".to_owned())
        );
        assert_eq!(parse("'abc"), Err("the string starting at character 2 has no closing quote".to_owned()));
        assert_eq!(parse("a() b()"), Err("unexpected 'b' at character 6 after the end of the expression".to_owned()));
        assert_eq!(
            parse("true"),
            Err("'true' at character 2 is not a literal in ARM expressions: write true()".to_owned())
        );
        assert_eq!(parse("x(#)"), Err("unexpected character '#' at character 4".to_owned()));
        assert_eq!(parse("f()."), Err("expected a property name after '.', but the expression ends".to_owned()));
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{}1{}", "f(".repeat(200), ")".repeat(200));
        assert!(parse(&deep).is_err_and(|e| e == "the expression nests more than 64 levels deep"));
        let deep = format!("{}1{}", "f(".repeat(63), ")".repeat(63));
        assert!(parse(&deep).is_ok());
    }
}
